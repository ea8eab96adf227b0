"""Measure a command run as a subprocess: wall time and peak resident memory of its whole process tree.

`run_measured(cmd)` starts the command, and a background thread samples,
every ~50 ms, the SUM of resident memory (VmRSS in /proc/PID/status) over the
process and all its descendants (found by walking the ppid links in
/proc/*/stat, plus anything left in the child's own session, so workers that
were re-parented after their parent exited still count), keeping the peak.
A sum of RSS counts pages shared between processes (libraries, copy-on-write
pages of forked workers) once per process, so for multi-process commands it
is an upper bound on the memory the tree really holds; for a single process
it is that process's RSS.

As a cross-check it also reports `resource.getrusage(RUSAGE_CHILDREN)`'s
`ru_maxrss`, the largest RSS of any single waited-for descendant (the kernel's
own high-water mark, so it catches spikes shorter than the sampling period),
and the CPU seconds (user + system) the waited-for descendants used.

Linux only (/proc). Also: `median`, `print_table` for aligned plain-text tables, and
the plumbing of benchmarks that run their measured work as child processes of
themselves: `child_env` (the environment a child needs to import this
repository), `emit_result` (the child prints one JSON line) and
`parse_result` / `failure_reason` (the parent reads it back, or says why the
run failed).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

SAMPLE_PERIOD_S = 0.05
TAIL_CHARS = 4000
RESULT_PREFIX = "BENCHMARK_RESULT "  # a child's one line of JSON results starts with this


@dataclass
class Measurement:
    wall_s: float
    peak_rss_bytes: int  # peak over samples of the summed VmRSS of the process tree
    returncode: int  # negative: killed by that signal (e.g. -9 for the OOM killer)
    stdout_tail: str  # the last TAIL_CHARS characters of stdout and stderr together
    ru_maxrss_bytes: int | None = None  # largest single descendant RSS, when it rose above earlier children's
    cpu_s: float | None = None  # user + system CPU seconds of the waited-for descendants
    samples: int = 0  # how many memory samples were taken
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


# ---------------------------------------------------------------- /proc walking


def _read_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[1]), int(fields[3])  # fields after comm: state, ppid, pgrp, session
    except (IndexError, ValueError):
        return None


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return 0  # gone, or a zombie / kernel thread without VmRSS


def tree_pids(root: int, session: int | None = None) -> set[int]:
    """`root` and all its descendants (by ppid), plus every process of `session` when given."""
    children: dict[int, list[int]] = {}
    in_session: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        info = _read_stat(pid)
        if info is None:
            continue
        ppid, sid = info
        children.setdefault(ppid, []).append(pid)
        if session is not None and sid == session:
            in_session.add(pid)
    found = {root}
    stack = [root, *in_session]
    found.update(in_session)
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def tree_rss_bytes(root: int, session: int | None = None) -> int:
    """Summed VmRSS of `root`'s process tree right now."""
    return sum(_rss_bytes(pid) for pid in tree_pids(root, session))


# ---------------------------------------------------------------- running


def run_measured(
    cmd: Sequence[str],
    *,
    cwd: str | None = None,
    env: dict | None = None,
    timeout: float | None = None,
) -> Measurement:
    """Run `cmd`, wait for it, and return its wall time, peak tree RSS, exit status and output tail.

    The command runs in a new session; on timeout the whole session is
    killed and `timed_out` is set (returncode is then the kill's, -9).
    """
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its session id is its pid: lets us find and kill orphaned workers
    )
    peak = 0
    samples = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, samples
        while True:
            try:
                rss = tree_rss_bytes(proc.pid, session=proc.pid)
            except Exception:  # never let the sampler kill the measurement
                rss = 0
            samples += 1
            peak = max(peak, rss)
            if stop.wait(SAMPLE_PERIOD_S):
                return

    sampler = threading.Thread(target=sample, name="rss-sampler", daemon=True)
    sampler.start()
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_session(proc.pid)
        out, _ = proc.communicate()
    except BaseException:  # e.g. KeyboardInterrupt: do not leave the tree running
        _kill_session(proc.pid)
        proc.wait()
        raise
    finally:
        stop.set()
        sampler.join()
    wall = time.perf_counter() - start
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss (kB on Linux) is a maximum over all children ever waited for: it only tells
    # about this command when it rose.
    ru_maxrss = usage_after.ru_maxrss * 1024 if usage_after.ru_maxrss > usage_before.ru_maxrss else None
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    text = out.decode("utf-8", errors="replace") if out else ""
    return Measurement(
        wall_s=wall,
        peak_rss_bytes=peak,
        returncode=proc.returncode,
        stdout_tail=text[-TAIL_CHARS:],
        ru_maxrss_bytes=ru_maxrss,
        cpu_s=cpu,
        samples=samples,
        timed_out=timed_out,
    )


def _kill_session(sid: int) -> None:
    try:
        os.killpg(sid, 9)  # with start_new_session the child leads its own process group
    except OSError:
        pass
    for pid in tree_pids(sid, session=sid):  # anything that moved to another group
        try:
            os.kill(pid, 9)
        except OSError:
            pass


# ---------------------------------------------------------------- reporting helpers


def median(values: Iterable[float | None]) -> float | None:
    """Median of the values that are not None; None when there are none."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    mid = len(xs) // 2
    return float(xs[mid]) if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2.0


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x%").lstrip("x"))
        return True
    except ValueError:
        return False


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]], file=None) -> None:
    """Print an aligned plain-text table: numbers right-aligned, text left-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    ncols = max(len(r) for r in cells)
    cells = [r + [""] * (ncols - len(r)) for r in cells]
    widths = [max(len(r[i]) for r in cells) for i in range(ncols)]

    def line(row: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if _is_number(c) else c.ljust(w) for c, w in zip(row, widths)
        ).rstrip()

    print(line(cells[0]), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells[1:]:
        print(line(row), file=file)


# ---------------------------------------------------------------- child-process plumbing


def child_env(repo_root: str | os.PathLike) -> dict:
    """This process's environment, with `repo_root` first on PYTHONPATH and TensorFlow's info logs off."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.fspath(repo_root), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # less log noise; no effect on the work
    return env


def emit_result(result: dict) -> None:
    """In a child: print `result` as the one JSON line `parse_result` looks for."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def parse_result(m: Measurement) -> dict | None:
    """The last result line a child printed with `emit_result`, or None."""
    for line in reversed(m.stdout_tail.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                return json.loads(line[len(RESULT_PREFIX) :])
            except ValueError:
                return None
    return None


def failure_reason(m: Measurement, result: dict | None = None) -> str | None:
    """None when the run succeeded (exit status 0, no timeout, no MemoryError), else a short reason."""
    if m.timed_out:
        return "timed out"
    if "MemoryError" in m.stdout_tail or (result or {}).get("error") == "MemoryError":
        return "MemoryError"
    if m.returncode < 0:
        return f"killed by signal {-m.returncode}" + (" (OOM killer?)" if m.returncode == -9 else "")
    if m.returncode != 0:
        return f"exit status {m.returncode}"
    return None


def usable_cores() -> int:
    """Cores this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def write_results(path, out: dict, lead: str = "") -> None:
    """Write a benchmark's JSON to `path`, then print where it is and the headline (out["headline"])."""
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"{lead}results: {path}")
    print(out["headline"])


def machine_info(**extra) -> dict:
    """What a benchmark's JSON records about the machine it ran on."""
    import platform

    return {"cpu_count": os.cpu_count(), "usable_cores": usable_cores(), "arch": platform.machine(),
            "python": platform.python_version(), "platform": platform.platform(), **extra}

