"""Server-side batching, as TF Serving's --enable_batching: concurrent requests share one model call.

Requests for the same servable and signature whose inputs agree on every dimension but the first
wait in a queue up to batch_timeout_micros; a batch runs when it is full (max_batch_size rows) or
its timeout has passed, on one of num_batch_threads threads shared by every queue. The merged
outputs are split back by each request's rows. A queue already holding max_enqueued_batches
batches refuses new work (the caller answers UNAVAILABLE). If a merged call fails, its requests
run one by one, so one bad image fails only its own request.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from typing import Callable, Hashable

import numpy as np

from serving import _protos

_log = logging.getLogger("serving.batching")

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Arrays], Arrays]


WAIT_SLICE_S = 0.05  # how often a waiting request checks whether its client is still there


class BatchingUnavailable(Exception):
    """The batch queue is full or the scheduler has stopped; retrying later can succeed."""


def wait_done(wait: Callable[[float | None], bool], timeout: float | None,
              cancelled: Callable[[], bool] | None = None) -> str:
    """Calls `wait(seconds)` (True once done) until done: "done", or "late" after `timeout` seconds, or
    "cancelled" as soon as `cancelled()` says the client has gone."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = None if cancelled is None else WAIT_SLICE_S
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return "late"
            step = left if step is None else min(step, left)
        if wait(step):
            return "done"
        if cancelled is not None and cancelled():
            return "cancelled"


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's BatchingParameters; the defaults are TF Serving's when a field is unset."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def validate(self) -> None:
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise _protos.ConfigFileError(
                "Batching parameters max_batch_size, num_batch_threads and max_enqueued_batches must be at least 1.")
        if self.batch_timeout_micros < 0:
            raise _protos.ConfigFileError("Batching parameter batch_timeout_micros must not be negative.")
        sizes = self.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise _protos.ConfigFileError(
                "Batching parameter allowed_batch_sizes must increase and end with max_batch_size.")


def read_batching_parameters(path: str | None) -> BatchingOptions:
    """Reads a BatchingParameters text file as the pusher writes it; None gives TF Serving's defaults."""
    if not path:
        return BatchingOptions()
    params = _protos.read_text_proto(path, _protos.BatchingParameters, "batching parameters file")
    values = {name: getattr(params, name).value
              for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
              if params.HasField(name)}
    options = BatchingOptions(**values, allowed_batch_sizes=tuple(params.allowed_batch_sizes),
                              pad_variable_length_inputs=params.pad_variable_length_inputs)
    options.validate()
    if options.pad_variable_length_inputs:
        _log.warning("pad_variable_length_inputs is not supported here: requests whose shapes differ beyond the "
                     "first dimension run in separate batches")
    return options


def batch_rows(inputs: Arrays) -> int | None:
    """The common first-dimension size of all inputs, or None when they cannot be batched together."""
    sizes = {a.shape[0] if a.ndim else None for a in inputs.values()}
    return sizes.pop() if len(sizes) == 1 and None not in sizes else None


class _Task:
    __slots__ = ("inputs", "rows", "done", "outputs", "error", "abandoned")

    def __init__(self, inputs: Arrays, rows: int):
        self.inputs, self.rows = inputs, rows
        self.done = threading.Event()
        self.outputs: Arrays | None = None
        self.error: BaseException | None = None
        self.abandoned = False

    def finish(self, outputs: Arrays | None = None, error: BaseException | None = None) -> None:
        self.outputs, self.error = outputs, error
        self.done.set()


class _Batch:
    __slots__ = ("run", "tasks", "rows", "created", "closed", "key")

    def __init__(self, key: Hashable, run: RunFn):
        self.key, self.run = key, run
        self.tasks: list[_Task] = []
        self.rows = 0
        self.created = time.monotonic()
        self.closed = False


class BatchScheduler:
    """A shared batch scheduler: one queue per (servable, signature, input shapes), shared threads."""

    def __init__(self, options: BatchingOptions, on_batch: Callable[[Hashable, int], None] | None = None):
        """`on_batch(key, rows)` is told of every model call (key as given to run)."""
        options.validate()
        self.options = options
        self._on_batch = on_batch
        self._timeout = options.batch_timeout_micros / 1e6
        self._cv = threading.Condition()
        self._queues: dict[Hashable, collections.deque[_Batch]] = {}
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def run(self, key: Hashable, run: RunFn, inputs: Arrays, timeout: float | None = None,
            cancelled: Callable[[], bool] | None = None) -> Arrays:
        """Runs `run` on these inputs merged with other requests of the same key; blocks for the result.

        Raises BatchingUnavailable when the queue is full, TimeoutError when `timeout` seconds pass
        first, CancelledError when `cancelled()` turns true first (a request given up before its batch
        runs is left out of it), or whatever `run` raised for this request.
        """
        rows = batch_rows(inputs)
        if rows is None or rows == 0 or rows > self.options.max_batch_size:
            return run(inputs)
        shapes = tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in inputs.items()))
        key = (key, shapes)
        task = _Task(inputs, rows)
        with self._cv:
            if self._stopped:
                raise BatchingUnavailable("The server is shutting down; retry on another replica.")
            queue = self._queues.setdefault(key, collections.deque())
            batch = queue[-1] if queue else None
            if batch is None or batch.closed or batch.rows + rows > self.options.max_batch_size:
                if len(queue) >= self.options.max_enqueued_batches:
                    raise BatchingUnavailable(f"The batch queue is full (max_enqueued_batches: "
                                              f"{self.options.max_enqueued_batches}); retry later.")
                if batch is not None:
                    batch.closed = True
                batch = _Batch(key, run)
                queue.append(batch)
            batch.tasks.append(task)
            batch.rows += rows
            if batch.rows >= self.options.max_batch_size:
                batch.closed = True
            self._cv.notify_all()
        outcome = wait_done(task.done.wait, timeout, cancelled)
        if outcome != "done":
            task.abandoned = True
            raise TimeoutError if outcome == "late" else concurrent.futures.CancelledError
        if task.error is not None:
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def stop(self, timeout: float = 10.0) -> None:
        """Runs the batches already queued, then stops the threads; later requests are refused."""
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _next_batch(self) -> _Batch | None:
        with self._cv:
            while True:
                now = time.monotonic()
                ready: _Batch | None = None
                wait: float | None = None
                for queue in self._queues.values():
                    head = queue[0]
                    due = head.created + self._timeout
                    if head.closed or due <= now or self._stopped:
                        if ready is None or head.created < ready.created:
                            ready = head
                    else:
                        wait = due - now if wait is None else min(wait, due - now)
                if ready is not None:
                    queue = self._queues[ready.key]
                    queue.popleft()
                    if not queue:
                        del self._queues[ready.key]
                    return ready
                if self._stopped:
                    return None
                self._cv.wait(wait)

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            tasks = [t for t in batch.tasks if not t.abandoned]
            if tasks:
                self._process(batch.key, batch.run, tasks)

    def _process(self, key: Hashable, run: RunFn, tasks: list[_Task]) -> None:
        if len(tasks) == 1:
            self._run_alone(key, run, tasks[0])
            return
        rows = sum(t.rows for t in tasks)
        padded = next((size for size in self.options.allowed_batch_sizes if size >= rows), rows)
        merged = {}
        for name in tasks[0].inputs:
            parts = [t.inputs[name] for t in tasks]
            if padded > rows:
                parts.append(np.repeat(parts[0][:1], padded - rows, axis=0))
            merged[name] = np.concatenate(parts)
        try:
            outputs = run(merged)
            if self._on_batch:
                self._on_batch(key[0], padded)
            if any(a.ndim == 0 or a.shape[0] != padded for a in outputs.values()):
                raise ValueError("outputs do not follow the batch")
        except Exception:  # noqa: BLE001 - each request runs alone and gets its own result or error
            for task in tasks:
                self._run_alone(key, run, task)
            return
        start = 0
        for task in tasks:
            task.finish({name: a[start:start + task.rows] for name, a in outputs.items()})
            start += task.rows

    def _run_alone(self, key: Hashable, run: RunFn, task: _Task) -> None:
        try:
            outputs = run(task.inputs)
        except Exception as e:  # noqa: BLE001 - handed to the waiting request
            task.finish(error=e)
            return
        if self._on_batch:
            self._on_batch(key[0], task.rows)
        task.finish(outputs)
