"""Large REST bodies parsed in worker processes, so `json.loads` never holds the serving process's GIL.

Parsing a 28 MB body of numbers takes about a second of pure Python under the GIL, which pauses every
other request of the server. Each worker is `python -m serving._jsonparse` (numpy and json only, no
TensorFlow), fed over pipes: the body and the signature's input specs go in, numpy arrays or a
ServingError's code and sentence come out. A request waits for a free worker within its deadline; a
worker whose request's deadline passes or whose client leaves is killed, so abandoned work stops at
once; a worker that dies (the OOM killer) answers its request with one sentence and is replaced; a
worker still holding more than `retire_bytes` after a parse is replaced, so parse memory never stays.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
from typing import Callable

import numpy as np

from serving import _batching, _core, _jsonparse
from serving._jsonparse import ServingError, SignatureSpecs

_log = logging.getLogger("serving.rest")

RETIRE_BYTES = 256 << 20  # resident memory after a parse over which a worker is replaced
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

Parsed = tuple[str, dict[str, np.ndarray], bool]


class WorkerDied(Exception):
    """The worker's pipe broke: it exited or was killed while it had the request."""


class _Worker:
    """One `python -m serving._jsonparse` process and its two pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "serving._jsonparse"], cwd=_PACKAGE_ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.pid = self.proc.pid

    def send(self, body: bytes, specs: SignatureSpecs, max_depth: int) -> None:
        task = pickle.dumps((specs, max_depth), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            for part in (_jsonparse.HEADER.pack(len(task), len(body)), task, body):
                self._write(part)
        except OSError:  # BrokenPipeError: it died
            raise WorkerDied from None

    def _write(self, data: bytes) -> None:
        view, fd = memoryview(data), self.proc.stdin.fileno()
        while view:
            view = view[os.write(fd, view):]

    def ready(self, timeout: float | None) -> bool:
        """Whether a reply (or end of file) is waiting to be read, after up to `timeout` seconds."""
        return bool(select.select([self.proc.stdout], [], [], timeout)[0])

    def receive(self) -> tuple[tuple, int]:
        """(the worker's reply, its resident bytes after the parse)."""
        size = _jsonparse.SIZE.unpack(self._read(_jsonparse.SIZE.size))[0]
        return pickle.loads(self._read(size))

    def _read(self, size: int) -> bytearray:
        data, fd = bytearray(size), self.proc.stdout.fileno()
        view, done = memoryview(data), 0
        while done < size:
            count = os.readv(fd, [view[done:]])
            if not count:
                raise WorkerDied
            done += count
        return data

    def stop(self) -> int:
        """Kills the process (if still running) and reaps it; its exit status."""
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()
        return code


def died_error(code: int) -> ServingError:
    """The answer to a request whose worker died with exit status `code` while parsing it."""
    if code == -signal.SIGKILL:
        return ServingError("RESOURCE_EXHAUSTED", "The process parsing the request's JSON body was killed, most "
                                                  "likely for want of memory; send fewer values per request.")
    return ServingError("INTERNAL", f"The process parsing the request's JSON body stopped with exit status {code}; "
                                    f"retry the request.")


class ParsePool:
    """Up to `processes` parser processes; one is started at once so the first large body finds it ready."""

    def __init__(self, processes: int, retire_bytes: int = RETIRE_BYTES):
        self.processes, self.retire_bytes = processes, retire_bytes
        self._cv = threading.Condition()
        self._idle: list[_Worker] = []
        self._count = 0
        self._closed = False
        with self._cv:
            self._idle.append(self._start())

    def _start(self) -> _Worker:
        """A new worker, counted; called with the lock held."""
        worker = _Worker()
        self._count += 1
        return worker

    def pids(self) -> list[int]:
        """The process ids of the idle workers."""
        with self._cv:
            return [worker.pid for worker in self._idle]

    def parse(self, body: bytes, specs: SignatureSpecs, max_depth: int, deadline: Callable[[], float | None],
              cancelled: Callable[[], bool] | None, late: ServingError) -> Parsed:
        """parse_predict_body in a worker: (signature, inputs, row format?) or its ServingError. `deadline()`
        gives the seconds left; `late` is raised when they run out, CANCELLED when the client leaves."""
        worker = self._acquire(deadline, cancelled, late)
        keep = False
        try:
            worker.send(body, specs, max_depth)
            outcome = _batching.wait_done(worker.ready, deadline(), cancelled)
            if outcome != "done":
                raise late if outcome == "late" else _core.cancelled_error()
            reply, resident = worker.receive()
            keep = resident <= self.retire_bytes
            if not keep:
                _log.info("Replacing the JSON parser process %d: it holds %d MB after a parse", worker.pid,
                          resident >> 20)
        except WorkerDied:
            code = worker.stop()  # reaped here to name its exit status; _release stops it no further
            _log.error("The JSON parser process %d stopped with exit status %d while parsing a %d-byte body",
                       worker.pid, code, len(body))
            raise died_error(code) from None
        finally:
            self._release(worker, keep)
        if reply[0] == "error":
            raise ServingError(reply[1], reply[2])
        return reply[1], reply[2], reply[3]

    def _acquire(self, deadline: Callable[[], float | None], cancelled: Callable[[], bool] | None,
                 late: ServingError) -> _Worker:
        with self._cv:
            outcome = _batching.wait_done(
                lambda seconds: self._cv.wait_for(lambda: self._closed or self._idle or self._count < self.processes,
                                                  seconds), deadline(), cancelled)
            if outcome != "done":
                raise late if outcome == "late" else _core.cancelled_error()
            if self._closed:
                raise ServingError("UNAVAILABLE", "The server is shutting down; retry on another replica.")
            return self._idle.pop() if self._idle else self._start()

    def _release(self, worker: _Worker, keep: bool) -> None:
        with self._cv:
            if keep and not self._closed:
                self._idle.append(worker)
            else:
                self._count -= 1
                if not self._closed and not self._count:  # keep one ready
                    self._idle.append(self._start())
            self._cv.notify_all()
        if not keep:
            worker.stop()

    def close(self) -> None:
        """Stops the idle workers now, the busy ones when their parse ends."""
        with self._cv:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cv.notify_all()
        for worker in idle:
            worker.stop()
