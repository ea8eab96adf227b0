"""Run directories, the run manifest, fingerprints and the cache of successful stage executions.

Layout under --output_dir (local or gs://):

    runs/<run_id>/manifest.json        one per run; rewritten atomically after every stage change
    runs/<run_id>/report.html          the run report a person opens first (pipeline/report.py)
    runs/<run_id>/<stage>.traceback.txt  only for a stage that failed with an unexpected exception
    runs/latest                        symlink to the latest run dir (or a one-line file holding its id)
    stages/<stage>/<fingerprint16>/    a stage's outputs, addressed by its execution fingerprint
    cache/<stage>/<fingerprint>.json   the record of a successful execution: outputs, metrics, producer run

An execution fingerprint hashes the stage's name, its config section(s), its
code (the listed module files and folders, e.g. schemas/), the output
fingerprints of its upstream stages and the fingerprints of its external
inputs (user data folders, listed as relative path, size and mtime). An
output fingerprint identifies one execution (TFX-style: its execution
fingerprint plus the run and time that produced it) rather than rehashing
big files, so re-executing a stage - because its output went missing or
--no-cache - also re-executes everything downstream of it.

    python -c "from pipeline.manifest import load_manifest; print(load_manifest('out')['stages']['train'])"
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import posixpath
import secrets
from typing import Any, Iterable, Optional

MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.html"
RUNS_DIR = "runs"
STAGES_DIR = "stages"
CACHE_DIR = "cache"
LATEST = "latest"
FINGERPRINT_DIR_CHARS = 16
STATUSES = ("pending", "running", "succeeded", "failed", "cached", "skipped")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- files, local or gs://


def _remote(path: str) -> bool:
    return "://" in path


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def join(*parts: str) -> str:
    return posixpath.join(*parts) if _remote(parts[0]) else os.path.join(*parts)


def exists(path: str) -> bool:
    return _gfile().exists(path) if _remote(path) else os.path.exists(path)


def makedirs(path: str) -> None:
    if _remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def remove_tree(path: str) -> None:
    """Delete a folder and everything in it, if it exists."""
    if _remote(path):
        if _gfile().exists(path):
            _gfile().rmtree(path)
    elif os.path.isdir(path):
        import shutil

        shutil.rmtree(path)


def read_text(path: str) -> str:
    if _remote(path):
        with _gfile().GFile(path) as f:
            return f.read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_bytes(path: str) -> bytes:
    if _remote(path):
        with _gfile().GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def glob(pattern: str) -> list[str]:
    """The paths matching a shell pattern, local or gs://, sorted."""
    if _remote(pattern):
        return sorted(_gfile().glob(pattern))
    import glob as _glob

    return sorted(_glob.glob(pattern))


def write_text_atomic(path: str, text: str) -> None:
    """Replace `path` with `text` so a reader sees the old or the new file, never half of one."""
    if _remote(path):  # an object store replaces an object whole
        with _gfile().GFile(path, "w") as f:
            f.write(text)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str, value: Any) -> None:
    write_text_atomic(path, json.dumps(value, indent=1, sort_keys=False, default=json_default) + "\n")


def json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------- fingerprints


def fingerprint_json(value: Any) -> str:
    """sha256 of the canonical JSON of `value` (sorted keys)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _code_files(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        found.extend(os.path.join(root, name) for name in sorted(files)
                     if not name.endswith((".pyc", ".pyo")) and not name.startswith("."))
    return found


def _module_file(module: str, root: str) -> Optional[str]:
    """The source file of a dotted module inside the repo (a package's __init__.py), or None."""
    base = os.path.join(root, *module.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _imported_modules(path: str, module: str) -> set[str]:
    """Every module an `import` or `from ... import` anywhere in the file names (function bodies included)."""
    import ast

    with open(path, "rb") as f:
        tree = ast.parse(f.read(), filename=path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def import_closure(modules: Iterable[str], root: str = REPO_ROOT) -> list[str]:
    """The repo's source files that `modules` (dotted names) import, directly or through each other, sorted.

    Only modules under `root` count (the project's own code; TensorFlow and friends are pinned by
    constraints.txt). Parent packages count as Python runs them: importing a.b.c runs a/__init__ and a/b/__init__.
    """
    files: set[str] = set()
    pending = list(modules)
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        for i in range(1, len(parts)):  # parent packages run first
            pending.append(".".join(parts[:i]))
        path = _module_file(module, root)
        if path is None or path in files:
            continue
        files.add(path)
        pending.extend(_imported_modules(path, module))
        if path.endswith("__init__.py") and _loads_lazily(path):
            pending.extend(_submodules(module, os.path.dirname(path)))
    return sorted(os.path.relpath(p, root) for p in files)


def _loads_lazily(init_path: str) -> bool:
    """A package __init__ that imports its modules on demand (PEP 562 __getattr__, importlib), which no import
    statement shows: all of its modules then count."""
    with open(init_path, encoding="utf-8") as f:
        text = f.read()
    return "def __getattr__" in text or "import_module(" in text or "lazy_exports(" in text


def _submodules(package: str, folder: str) -> list[str]:
    names = []
    for entry in sorted(os.listdir(folder)):
        full = os.path.join(folder, entry)
        if entry.endswith(".py") and entry != "__init__.py":
            names.append(f"{package}.{entry[:-3]}")
        elif os.path.isfile(os.path.join(full, "__init__.py")):
            names.append(f"{package}.{entry}")
    return names


def fingerprint_code(paths: Iterable[str], root: str = REPO_ROOT) -> str:
    """sha256 over the contents of source files and folders (relative to the repo root); a missing path counts too.

    An entry without a path separator or .py suffix is a dotted module name and stands for its import closure
    inside the repo (import_closure), so a stage's fingerprint follows the code it really runs.
    """
    entries: set[str] = set()
    for entry in paths:
        is_module = "/" not in entry and os.sep not in entry and not entry.endswith(".py") and entry != "."
        entries.update(import_closure([entry], root) if is_module and _module_file(entry, root) else [entry])
    digest = hashlib.sha256()
    for entry in sorted(entries):
        full = entry if os.path.isabs(entry) else os.path.join(root, entry)
        if not os.path.exists(full):
            digest.update(f"missing {entry}\n".encode())
            continue
        for file in _code_files(full):
            with open(file, "rb") as f:
                content = hashlib.sha256(f.read()).hexdigest()
            digest.update(f"{os.path.relpath(file, root)} {content}\n".encode())
    return digest.hexdigest()


def fingerprint_tree(path: str) -> str:
    """sha256 of a folder's listing: (relative path, size, mtime) of every file, local or gs://; "missing" if absent.

    Cheap for large image folders: no file is read.
    """
    lines = []
    if _remote(path):
        gfile = _gfile()
        if not gfile.exists(path):
            return "missing"
        for root, _, files in gfile.walk(path):
            for name in files:
                full = posixpath.join(root, name)
                stat = gfile.stat(full)
                lines.append(f"{posixpath.relpath(full, path)}\t{stat.length}\t{stat.mtime_nsec}")
    else:
        if not os.path.exists(path):
            return "missing"
        if os.path.isfile(path):
            stat = os.stat(path)
            return fingerprint_json([os.path.basename(path), stat.st_size, stat.st_mtime_ns])
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in files:
                full = os.path.join(root, name)
                try:
                    stat = os.stat(full)
                except OSError:  # a dangling link or a file removed while listing
                    continue
                lines.append(f"{os.path.relpath(full, path)}\t{stat.st_size}\t{stat.st_mtime_ns}")
    lines.sort()
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- run ids and dirs


def new_run_id() -> str:
    """Sortable and unique: UTC time to the microsecond plus 6 random hex digits."""
    now = _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond:06d}Z-" + secrets.token_hex(3)


def run_dir(output_dir: str, run_id: str) -> str:
    return join(output_dir, RUNS_DIR, run_id)


def stage_dir(output_dir: str, stage: str, fingerprint: str) -> str:
    return join(output_dir, STAGES_DIR, stage, fingerprint[:FINGERPRINT_DIR_CHARS])


def set_latest(output_dir: str, run_id: str) -> str:
    """Point runs/latest at `run_id`: a relative symlink where possible, else a one-line file."""
    latest = join(output_dir, RUNS_DIR, LATEST)
    if not _remote(output_dir):
        tmp = f"{latest}.tmp-{os.getpid()}"
        try:
            if os.path.lexists(tmp):
                os.remove(tmp)
            os.symlink(run_id, tmp)
            os.replace(tmp, latest)
            return latest
        except OSError:
            if os.path.lexists(tmp):
                os.remove(tmp)
            if os.path.isdir(latest) and not os.path.islink(latest):
                raise
    write_text_atomic(latest, run_id + "\n")
    return latest


def latest_run_id(output_dir: str) -> Optional[str]:
    """The run id runs/latest names, or None before the first run."""
    latest = join(output_dir, RUNS_DIR, LATEST)
    if not _remote(output_dir) and os.path.islink(latest):
        return os.path.basename(os.readlink(latest).rstrip("/"))
    if not exists(latest):
        return None
    return read_text(latest).strip() or None


def load_manifest(output_dir: str, run_id: str = LATEST) -> dict[str, Any]:
    """The manifest of `run_id` (default: the latest run) as a dict."""
    if run_id == LATEST:
        found = latest_run_id(output_dir)
        if found is None:
            raise FileNotFoundError(f"{join(output_dir, RUNS_DIR)} holds no runs yet; run the pipeline first.")
        run_id = found
    return json.loads(read_text(join(run_dir(output_dir, run_id), MANIFEST_FILE)))


# ---------------------------------------------------------------- the cache


def cache_path(output_dir: str, stage: str, fingerprint: str) -> str:
    return join(output_dir, CACHE_DIR, stage, f"{fingerprint}.json")


def cache_lookup(output_dir: str, stage: str, fingerprint: str) -> tuple[Optional[dict], Optional[str]]:
    """(record, None) for a usable earlier execution; (None, missing output URI) when one of its outputs is gone;
    (None, None) when there was none."""
    path = cache_path(output_dir, stage, fingerprint)
    if not exists(path):
        return None, None
    try:
        record = json.loads(read_text(path))
    except (ValueError, OSError):
        return None, None
    for uri in record.get("outputs", {}).values():
        if not exists(uri):
            return None, uri
    return record, None


def cache_store(output_dir: str, stage: str, fingerprint: str, record: dict) -> str:
    path = cache_path(output_dir, stage, fingerprint)
    write_json_atomic(path, record)
    return path


# ---------------------------------------------------------------- the manifest


@dataclasses.dataclass
class StageRecord:
    """One stage of one run, as manifest.json shows it."""

    name: str
    status: str = "pending"
    cached: bool = False
    started: Optional[str] = None
    ended: Optional[str] = None
    duration_s: Optional[float] = None
    fingerprint: Optional[str] = None
    """Execution fingerprint: config section, code, input fingerprints."""
    output_fingerprint: Optional[str] = None
    output_dir: Optional[str] = None
    outputs: dict = dataclasses.field(default_factory=dict)
    inputs: dict = dataclasses.field(default_factory=dict)
    """Upstream stage -> the output fingerprint consumed (lineage)."""
    external_inputs: dict = dataclasses.field(default_factory=dict)
    """Data outside the pipeline (e.g. a --data_dir) -> its listing fingerprint."""
    config_fingerprint: Optional[str] = None
    code_fingerprint: Optional[str] = None
    produced_by_run: Optional[str] = None
    """For a cached stage: the run that executed it."""
    metrics: dict = dataclasses.field(default_factory=dict)
    skip_reason: Optional[str] = None
    error: Optional[str] = None
    error_type: Optional[str] = None
    user_error: Optional[bool] = None
    traceback: Optional[str] = None


@dataclasses.dataclass
class Manifest:
    """A run's manifest; `save()` writes it atomically to runs/<run_id>/manifest.json."""

    run_id: str
    output_dir: str
    config: dict
    beam_args: list
    no_cache: bool = False
    invocation: dict = dataclasses.field(default_factory=dict)
    """How the run was asked for: the command line's arguments, the preset, the config file and the overrides."""
    status: str = "running"
    started: str = dataclasses.field(default_factory=utc_now)
    ended: Optional[str] = None
    duration_s: Optional[float] = None
    failed_stage: Optional[str] = None
    error: Optional[str] = None
    stages: dict = dataclasses.field(default_factory=dict)
    """Stage name -> StageRecord, in execution order."""

    @property
    def path(self) -> str:
        return join(run_dir(self.output_dir, self.run_id), MANIFEST_FILE)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def user_error(self) -> bool:
        """True when the failure is one the user can fix (a CLI exits 2 for it, 1 otherwise)."""
        return bool(self.failed_stage and self.stages[self.failed_stage].user_error)

    def stage(self, name: str) -> StageRecord:
        return self.stages[name]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self) -> str:
        write_json_atomic(self.path, self.to_dict())
        return self.path
