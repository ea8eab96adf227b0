"""The executor, caching and the run manifest, on small pure-Python stages that write small files."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pipeline import dag, executor
from pipeline import manifest as mf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Section:
    value: int = 1


@dataclasses.dataclass
class FakeConfig:
    a: Section = dataclasses.field(default_factory=Section)
    b: Section = dataclasses.field(default_factory=Section)
    c: Section = dataclasses.field(default_factory=Section)
    d: Section = dataclasses.field(default_factory=Section)
    data_dir: str = ""


class Calls(list):
    """Names of the stages that actually ran, in order."""


def _writer(name: str, calls: Calls, fail: Exception | None = None):
    """A stage that writes <out>/<name>.txt from its config value and its inputs' contents."""

    def run(ctx: executor.StageContext) -> dict:
        calls.append(name)
        if fail is not None:
            raise fail
        upstream = [open(os.path.join(ctx.input_dir(i), f"{i}.txt")).read()
                    for i in sorted(ctx.inputs) if ctx.inputs[i]]
        text = f"{name}{getattr(ctx.config, name).value}(" + ",".join(upstream) + ")"
        path = ctx.output("text", os.path.join(ctx.output_dir, f"{name}.txt"))
        with open(path, "w") as f:
            f.write(text)
        return {"chars": len(text)}

    return run


@pytest.fixture
def code(tmp_path):
    """One source file per fake stage, so a code change can be simulated."""
    files = {}
    for name in "abcd":
        path = tmp_path / "code" / f"{name}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"# stage {name}\n")
        files[name] = str(path)
    return files


def stages(calls: Calls, code: dict, *, fail: dict | None = None, skip: dict | None = None,
           external=None) -> list[executor.Stage]:
    """a -> b -> c, and a -> d: deleting b's output must re-run b and c, not a or d."""
    fail, skip = fail or {}, skip or {}
    return [
        executor.Stage("a", _writer("a", calls, fail.get("a")), (), "a", [code["a"]], external_inputs=external),
        executor.Stage("b", _writer("b", calls, fail.get("b")), ("a",), "b", [code["b"]], skip=skip.get("b")),
        executor.Stage("c", _writer("c", calls, fail.get("c")), ("a", "b"), "c", [code["c"]]),
        executor.Stage("d", _writer("d", calls, fail.get("d")), ("a",), "d", [code["d"]]),
    ]


def run(output_dir, calls, code, config=None, **kwargs):
    lines: list[str] = []
    options = {k: kwargs.pop(k) for k in ("fail", "skip", "external") if k in kwargs}
    result = executor.run_pipeline(stages(calls, code, **options), config or FakeConfig(), output_dir=str(output_dir),
                              log=lines.append, **kwargs)
    return result, lines


def statuses(manifest: mf.Manifest) -> dict[str, str]:
    return {name: record.status for name, record in manifest.stages.items()}


def test_first_run_writes_outputs_manifest_and_latest(tmp_path, code):
    calls = Calls()
    m, lines = run(tmp_path / "out", calls, code, beam_args=["--runner=DirectRunner"])
    assert m.ok and calls == ["a", "b", "c", "d"]
    assert statuses(m) == dict.fromkeys("abcd", "succeeded")
    assert lines[0] == "[a] started" and lines[1].startswith("[a] done in ") and lines[1].endswith(" s")

    on_disk = mf.load_manifest(str(tmp_path / "out"))
    assert on_disk["run_id"] == m.run_id and on_disk["status"] == "succeeded"
    assert on_disk["beam_args"] == ["--runner=DirectRunner"] and on_disk["config"]["b"] == {"value": 1}
    runs = tmp_path / "out" / "runs"
    assert os.path.islink(runs / "latest") and os.path.realpath(runs / "latest") == os.path.realpath(runs / m.run_id)
    c = on_disk["stages"]["c"]
    assert c["inputs"] == {"a": m.stages["a"].output_fingerprint, "b": m.stages["b"].output_fingerprint}
    assert c["metrics"] == {"chars": len("c1(a1(),b1(a1()))")} and c["duration_s"] >= 0 and not c["cached"]
    with open(c["outputs"]["text"]) as f:
        assert f.read() == "c1(a1(),b1(a1()))"
    assert c["outputs"]["dir"] == c["output_dir"]
    assert c["output_dir"].startswith(str(tmp_path / "out" / "stages" / "c"))
    assert os.path.exists(tmp_path / "out" / "cache" / "c" / f"{c['fingerprint']}.json")


def test_second_run_is_all_cached(tmp_path, code):
    calls = Calls()
    first, _ = run(tmp_path, calls, code)
    second, lines = run(tmp_path, calls, code)
    assert calls == ["a", "b", "c", "d"]  # nothing ran the second time
    assert second.ok and statuses(second) == dict.fromkeys("abcd", "cached")
    assert all(r.cached and r.produced_by_run == first.run_id for r in second.stages.values())
    assert lines == [f"[{n}] cached (from run {first.run_id})" for n in "abcd"]
    assert second.stages["c"].outputs == first.stages["c"].outputs
    assert second.run_id > first.run_id and mf.latest_run_id(str(tmp_path)) == second.run_id


def test_deleting_an_output_reruns_that_stage_and_downstream_only(tmp_path, code):
    import shutil

    calls = Calls()
    first, _ = run(tmp_path, calls, code)
    shutil.rmtree(first.stages["b"].output_dir)
    calls.clear()
    second, lines = run(tmp_path, calls, code)
    assert calls == ["b", "c"]
    assert statuses(second) == {"a": "cached", "b": "succeeded", "c": "succeeded", "d": "cached"}
    assert any(line.startswith("[b] the cached output ") and "missing" in line for line in lines)
    assert second.stages["b"].output_fingerprint != first.stages["b"].output_fingerprint
    assert second.stages["c"].inputs["b"] == second.stages["b"].output_fingerprint
    assert os.path.exists(second.stages["c"].outputs["text"])


def test_changing_a_config_value_reruns_that_stage_and_downstream(tmp_path, code):
    calls = Calls()
    run(tmp_path, calls, code)
    calls.clear()
    changed = FakeConfig(b=Section(2))
    m, _ = run(tmp_path, calls, code, config=changed)
    assert calls == ["b", "c"]
    with open(m.stages["c"].outputs["text"]) as f:
        assert f.read() == "c1(a1(),b2(a1()))"
    calls.clear()
    back, _ = run(tmp_path, calls, code)  # the first configuration's executions are still in the cache
    assert calls == [] and statuses(back) == dict.fromkeys("abcd", "cached")


def test_changing_a_stage_source_file_reruns_it_and_no_cache_runs_everything(tmp_path, code):
    calls = Calls()
    run(tmp_path, calls, code)
    with open(code["d"], "a") as f:
        f.write("x = 1\n")
    calls.clear()
    run(tmp_path, calls, code)
    assert calls == ["d"]
    calls.clear()
    cached, _ = run(tmp_path, calls, code)
    leftover = os.path.join(cached.stages["a"].output_dir, "stale.txt")
    open(leftover, "w").close()
    m, _ = run(tmp_path, calls, code, no_cache=True)
    assert calls == ["a", "b", "c", "d"] and m.no_cache and not any(r.cached for r in m.stages.values())
    assert not os.path.exists(leftover)  # a forced execution starts from an empty output dir


def test_a_failing_stage_stops_the_run_and_a_rerun_resumes_from_it(tmp_path, code):
    calls = Calls()
    broken = executor.StageError("the widget folder /nowhere does not exist; pass --widget DIR.")
    m, lines = run(tmp_path, calls, code, fail={"b": broken})
    assert calls == ["a", "b"]
    assert not m.ok and m.status == "failed" and m.failed_stage == "b" and m.user_error
    assert statuses(m) == {"a": "succeeded", "b": "failed", "c": "pending", "d": "pending"}
    assert lines[-1].startswith("[b] failed after ") and lines[-1].endswith(": " + str(broken))
    on_disk = mf.load_manifest(str(tmp_path))
    assert on_disk["status"] == "failed" and on_disk["error"] == f"stage b failed: {broken}"
    assert on_disk["stages"]["b"]["error"] == str(broken) and on_disk["stages"]["b"]["ended"]

    calls.clear()
    again, _ = run(tmp_path, calls, code)
    assert calls == ["b", "c", "d"] and again.ok
    assert statuses(again) == {"a": "cached", "b": "succeeded", "c": "succeeded", "d": "succeeded"}


def test_an_unexpected_exception_is_one_sentence_with_the_traceback_kept(tmp_path, code):
    m, lines = run(tmp_path, Calls(), code, fail={"c": ValueError("could not broadcast\n shapes (3,) (4,)")})
    record = m.stages["c"]
    assert record.error == "ValueError: could not broadcast shapes (3,) (4,)" and not m.user_error
    with open(record.traceback) as f:
        assert "Traceback" in f.read()
    assert "\n" not in lines[-1]


def test_an_interrupt_mid_stage_leaves_a_readable_manifest_and_propagates(tmp_path, code):
    calls = Calls()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, calls, code, fail={"c": KeyboardInterrupt()})
    on_disk = mf.load_manifest(str(tmp_path))
    assert on_disk["status"] == "failed" and on_disk["failed_stage"] == "c"
    assert on_disk["stages"]["c"]["error"] == "interrupted (KeyboardInterrupt)."
    assert [on_disk["stages"][n]["status"] for n in "abcd"] == ["succeeded", "succeeded", "failed", "pending"]


KILLED_RUN = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from pipeline import executor

    def first(ctx):
        open(os.path.join(ctx.output_dir, "a.txt"), "w").write("a")
        return {{}}

    def slow(ctx):
        open({marker!r}, "w").write("started")
        time.sleep(60)

    stages = [executor.Stage("a", first, (), "a", [{code!r}]), executor.Stage("b", slow, ("a",), "b", [{code!r}])]
    executor.run_pipeline(stages, {{"a": 1, "b": 2}}, output_dir={out!r})
""")


def test_a_killed_run_leaves_a_valid_manifest_and_the_rerun_continues(tmp_path, code):
    out, marker = str(tmp_path / "out"), str(tmp_path / "marker")
    script = KILLED_RUN.format(repo=REPO, marker=marker, code=code["a"], out=out)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(marker):
            assert proc.poll() is None, "the pipeline process ended before its slow stage"
            assert time.monotonic() < deadline, "the slow stage never started"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    killed = mf.load_manifest(out)  # parses: every write was atomic
    assert killed["status"] == "running"
    assert killed["stages"]["a"]["status"] == "succeeded" and killed["stages"]["b"]["status"] == "running"
    assert not [n for n in os.listdir(os.path.join(out, "runs", killed["run_id"])) if ".tmp-" in n]

    calls = Calls()
    resumed = executor.run_pipeline(
        [executor.Stage("a", _writer("a", calls), (), "a", [code["a"]]),
         executor.Stage("b", lambda ctx: calls.append("b") or {}, ("a",), "b", [code["a"]])],
        {"a": 1, "b": 2}, output_dir=out, log=lambda line: None,
    )
    assert calls == ["b"] and resumed.ok and resumed.stages["a"].produced_by_run == killed["run_id"]


def test_a_skipped_stage_is_recorded_and_downstream_sees_no_input(tmp_path, code):
    calls = Calls()
    m, lines = run(tmp_path, calls, code, skip={"b": "b.enabled is false"})
    assert calls == ["a", "c", "d"] and m.ok
    assert m.stages["b"].status == "skipped" and m.stages["b"].skip_reason == "b.enabled is false"
    assert "[b] skipped: b.enabled is false" in lines
    with open(m.stages["c"].outputs["text"]) as f:
        assert f.read() == "c1(a1())"


def test_external_data_folders_are_fingerprinted_by_listing(tmp_path, code):
    data = tmp_path / "images"
    (data / "x").mkdir(parents=True)
    (data / "x" / "one.jpg").write_bytes(b"12345")
    external = lambda config: {"data_dir:images": mf.fingerprint_tree(str(data))}  # noqa: E731
    calls = Calls()
    run(tmp_path / "out", calls, code, external=external)
    calls.clear()
    run(tmp_path / "out", calls, code, external=external)
    assert calls == []
    (data / "x" / "two.png").write_bytes(b"6")
    m, _ = run(tmp_path / "out", calls, code, external=external)
    assert calls == ["a", "b", "c", "d"]
    assert m.stages["a"].external_inputs == {"data_dir:images": mf.fingerprint_tree(str(data))}


def test_fingerprint_tree_sees_names_sizes_and_times_not_the_root_path(tmp_path):
    for root in ("one", "two"):
        (tmp_path / root / "sub").mkdir(parents=True)
        (tmp_path / root / "sub" / "f.jpg").write_bytes(b"abc")
        os.utime(tmp_path / root / "sub" / "f.jpg", ns=(10**18, 10**18))
    assert mf.fingerprint_tree(str(tmp_path / "one")) == mf.fingerprint_tree(str(tmp_path / "two"))
    (tmp_path / "two" / "sub" / "f.jpg").write_bytes(b"abd")
    assert mf.fingerprint_tree(str(tmp_path / "one")) != mf.fingerprint_tree(str(tmp_path / "two"))
    assert mf.fingerprint_tree(str(tmp_path / "absent")) == "missing"


def test_latest_falls_back_to_a_one_line_file_where_symlinks_fail(tmp_path, code, monkeypatch):
    def no_symlinks(*args, **kwargs):
        raise OSError("symlinks are not supported here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    m, _ = run(tmp_path, Calls(), code)
    latest = tmp_path / "runs" / "latest"
    assert latest.is_file() and not latest.is_symlink() and latest.read_text() == m.run_id + "\n"
    assert mf.load_manifest(str(tmp_path))["run_id"] == m.run_id


def test_stage_lists_must_be_in_dependency_order(code):
    with pytest.raises(ValueError, match="no earlier stage"):
        executor.check_stages([executor.Stage("b", lambda ctx: {}, ("a",)), executor.Stage("a", lambda ctx: {})])
    with pytest.raises(ValueError, match="two stages"):
        executor.check_stages([executor.Stage("a", lambda ctx: {}), executor.Stage("a", lambda ctx: {})])


def test_run_ids_sort_by_time():
    ids = [mf.new_run_id() for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3


def test_the_real_stage_list_follows_the_config():
    from pipeline import config as cfg

    quick, _, _ = cfg.parse_args([])
    stages = dag.build_stages(quick)
    assert [s.name for s in stages] == ["synthetic", "ingest", "validate", "statistics", "tune", "train", "evaluate",
                                        "push"]
    assert not any(s.skip for s in stages)
    executor.check_stages(stages)
    for stage in stages:
        stage.config_value(quick)  # every config key a stage depends on exists
        for module in stage.code:
            assert mf.import_closure([module]), f"{stage.name}: {module}"

    real, _, _ = cfg.parse_args(["--data_dir", "mine=/photos", "--no-tune", "--set", "ingest.validation=none"])
    stages = {s.name: s for s in dag.build_stages(real)}
    assert list(stages) == ["ingest", "validate", "statistics", "tune", "train", "evaluate", "push"]
    assert not stages["ingest"].upstream
    assert stages["validate"].skip == "ingest.validation is none" and stages["tune"].skip == "tune.enabled is false"
    assert stages["ingest"].external_inputs(real) == {"data_dir:mine": "missing"}


def test_a_code_fingerprint_follows_the_import_closure(tmp_path):
    """Changing any module a stage imports (also lazily, inside a function) changes its fingerprint; others don't."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def run():\n    from pkg import b\n    return b.VALUE\n")
    (pkg / "b.py").write_text("from .c import VALUE\n")
    (pkg / "c.py").write_text("VALUE = 1\n")
    (pkg / "d.py").write_text("OTHER = 1\n")
    lazy = tmp_path / "lazy"
    lazy.mkdir()
    (lazy / "__init__.py").write_text("import importlib\n\ndef __getattr__(name):\n"
                                      "    return getattr(importlib.import_module('lazy.impl'), name)\n")
    (lazy / "impl.py").write_text("VALUE = 1\n")
    root = str(tmp_path)
    assert mf.import_closure(["lazy"], root) == ["lazy/__init__.py", "lazy/impl.py"]
    assert mf.import_closure(["pkg.a"], root) == ["pkg/__init__.py", "pkg/a.py", "pkg/b.py", "pkg/c.py"]
    before = mf.fingerprint_code(["pkg.a"], root)
    (pkg / "d.py").write_text("OTHER = 2\n")
    assert mf.fingerprint_code(["pkg.a"], root) == before
    (pkg / "c.py").write_text("VALUE = 2\n")
    assert mf.fingerprint_code(["pkg.a"], root) != before


def test_each_real_stage_is_fingerprinted_by_the_code_it_runs(tmp_path):
    """A change to a module a stage's component imports re-runs that stage, and only the stages that import it."""
    import shutil

    from pipeline import config as cfg

    quick, _, _ = cfg.parse_args([])
    stages = dag.build_stages(quick)
    closures = {s.name: set(mf.import_closure(s.code)) for s in stages}
    assert "components/decode.py" in closures["evaluate"]  # the evaluator decodes the historical photos with it
    # the trainer and tuner packages load their TensorFlow modules lazily; they count all the same
    assert {"components/trainer/fit.py", "components/models.py"} <= closures["train"]
    assert {"components/tuner/search.py", "components/hparams.py"} <= closures["tune"]
    assert not any(p.startswith("components/trainer") for p in closures["ingest"])
    for package in ("components", "schemas", "pipeline"):
        shutil.copytree(os.path.join(REPO, package), tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    before = {s.name: mf.fingerprint_code(s.code, str(tmp_path)) for s in stages}
    with open(tmp_path / "components" / "decode.py", "a") as f:
        f.write("\n# a change\n")
    after = {s.name: mf.fingerprint_code(s.code, str(tmp_path)) for s in stages}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {name for name, files in closures.items() if "components/decode.py" in files}
    assert {"ingest", "evaluate"} <= changed and "synthetic" not in changed
