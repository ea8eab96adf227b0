"""The whole pipeline end to end on a tiny generated set: every stage runs, the served model answers, caching works."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

STAGES = ["synthetic", "ingest", "validate", "statistics", "tune", "train", "evaluate", "push"]

# Tens of tiny images and a few training steps: the run checks the wiring, not the model's quality, so the
# blessing thresholds let an undertrained model through (they are config, as a user would set them).
TINY = [
    "--set", "data.synthetic.num_images=48", "--set", "data.synthetic.size=40", "--set", "data.stored_size=40",
    "--set", "data.min_side=32", "--set", "tune.max_trials=1", "--set", "tune.steps_per_epoch=2",
    "--set", "train.image_size=32", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=3",
    "--set", "train.batch_size=8", "--set", "evaluate.grid_images=4",
    "--set", "evaluate.thresholds.min_psnr_gain_db=-100", "--set", "evaluate.thresholds.min_colorfulness_gain=-1000",
    "--set", "evaluate.thresholds.max_psnr_drop_db=100", "--set", "evaluate.thresholds.max_colorfulness_drop=1000",
    "--set", "evaluate.thresholds.min_colorfulness_recovered=0",
    "--runner=DirectRunner",
]


def _run(output_dir: str, *extra: str) -> dict:
    from pipeline import manifest, run

    assert run.main(["--output_dir", output_dir, *TINY, *extra]) == 0
    return manifest.load_manifest(output_dir)


def _statuses(m: dict) -> dict[str, str]:
    return {name: stage["status"] for name, stage in m["stages"].items()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pipeline"))
    return out, _run(out)


def test_every_stage_runs_and_writes_what_users_look_for(first_run):
    out, m = first_run
    assert list(m["stages"]) == STAGES
    assert set(_statuses(m).values()) == {"succeeded"}
    assert m["status"] == "succeeded" and m["config"]["output_dir"] == out
    for name in STAGES:
        stage = m["stages"][name]
        assert stage["duration_s"] >= 0 and stage["fingerprint"] and os.path.isdir(stage["outputs"]["dir"])
    assert m["stages"]["train"]["inputs"]["ingest"] == m["stages"]["ingest"]["output_fingerprint"]  # lineage
    evaluation = m["stages"]["evaluate"]
    with open(evaluation["outputs"]["metrics"]) as f:
        metrics = json.load(f)
    assert metrics["images"] > 0 and {"psnr", "ssim", "auc", "colorfulness_diff"} <= set(metrics["model"])
    assert Image.open(evaluation["outputs"]["grid"]).size[0] == 3 * 32
    assert m["stages"]["push"]["metrics"]["pushed"] and m["stages"]["push"]["metrics"]["version"] == 1
    assert os.path.isfile(os.path.join(out, "serving", "models.config"))
    from pipeline import manifest

    assert manifest.latest_run_id(out) == m["run_id"]


def test_the_served_model_answers_grpc_and_rest_with_the_input_size(first_run):
    from serving import client, server

    out, _ = first_run
    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8)).save(photo, "JPEG")
    running = server.serve(server.ServerConfig(
        port=0, rest_api_port=0, model_config_file=os.path.join(out, "serving", "models.config"),
        bind_address="127.0.0.1"))
    try:
        for protocol, port in (("grpc", running.grpc_port), ("rest", running.rest_port)):
            png = client.Colorizer(f"127.0.0.1:{port}", protocol).colorize(photo.getvalue())
            assert Image.open(io.BytesIO(png)).size == (70, 45), protocol
    finally:
        running.stop()


class _Page(HTMLParser):
    """What the report shows: section ids, tagged numbers, verdict, checks, stage rows, trials and pictures."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.metrics, self.checks, self.stages, self.trials = [], {}, {}, {}, []
        self.verdict, self.best_trial, self.images, self.links, self.scripts = None, None, [], [], 0
        self.feed(text)

    def handle_starttag(self, name, attrs):
        a = dict(attrs)
        if name == "section":
            self.sections.append(a["id"])
        if "data-metric" in a:
            self.metrics[a["data-metric"]] = a.get("data-value")
        if "data-check" in a:
            self.checks[a["data-check"]] = a["data-passed"] == "true"
        if "data-stage" in a:
            self.stages[a["data-stage"]] = a["data-status"]
        if "data-trial" in a:
            self.trials.append(a["data-trial"])
            if a.get("class") == "best":
                self.best_trial = a["data-trial"]
        if "data-verdict" in a:
            self.verdict = a["data-verdict"]
        if name == "img":
            self.images.append((a["src"], a.get("alt")))
        if name in ("a", "link", "script", "iframe", "source") and (a.get("href") or a.get("src")):
            self.links.append(a.get("href") or a.get("src"))
        self.scripts += name == "script"


def _picture(src: str) -> Image.Image:
    assert src.startswith("data:image/") and ";base64," in src, src[:60]
    picture = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    picture.load()
    return picture


def test_the_run_writes_a_report_with_its_sections_numbers_and_pictures(first_run, capsys):
    from pipeline import report

    out, m = first_run
    run_dir = os.path.join(out, "runs", m["run_id"])
    with open(os.path.join(out, "runs", "latest", "report.html"), encoding="utf-8") as f:
        page = _Page(f.read())
    assert page.sections == ["run", "data", "tuning", "training", "verdict", "pictures", "serving"]
    assert page.stages == {name: "succeeded" for name in STAGES}
    evaluation = m["stages"]["evaluate"]["outputs"]
    with open(evaluation["metrics"]) as f:
        metrics = json.load(f)
    with open(evaluation["blessing"]) as f:
        blessing = json.load(f)
    for column in ("model", "gray"):
        for key in ("psnr", "ssim", "ab_mse", "colorfulness", "colorfulness_truth", "auc", "auc_rebalanced"):
            assert float(page.metrics[f"{column}.{key}"]) == metrics[column][key], (column, key)
    assert page.metrics["baseline.psnr"] is None  # no model was blessed before this run
    assert page.verdict == ("BLESSED" if blessing["blessed"] else "NOT_BLESSED")
    assert page.checks == {c["name"]: c["passed"] for c in blessing["checks"]} and page.checks
    tune = m["stages"]["tune"]["metrics"]
    assert len(page.trials) == tune["completed_trials"] and page.best_trial == tune["trial_id"]
    pictures = {alt: _picture(src) for src, alt in page.images}
    assert {"histogram of the lightness L over every stored pixel", "histogram of the ab colours", "the colour prior",
            "training and validation curves over the epochs", "the test grid"} <= set(pictures)
    assert pictures["the test grid"].size == Image.open(evaluation["grid"]).size
    assert page.scripts == 0 and not [link for link in page.links if not link.startswith("#")]  # nothing fetched

    started = time.perf_counter()
    assert report.main([os.path.join(out, "runs", "latest")]) == 0
    elapsed = time.perf_counter() - started
    assert f"report: wrote {os.path.join(run_dir, 'report.html')}" in capsys.readouterr().out
    with capsys.disabled():  # a figure to read, not a timed assertion (the README's comes from the quick run)
        print(f"\nreport rebuilt in {elapsed:.2f} s")
    assert os.path.getsize(os.path.join(run_dir, "report.html")) > 0


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_browser() is None, reason="no Chromium or Chrome installed (apt-get install chromium; .ci/run "
                                               "installs it when run as root)")
def test_the_report_renders_in_a_headless_browser(first_run, tmp_path, capsys):
    out, m = first_run
    page = os.path.join(out, "runs", m["run_id"], "report.html")
    screenshot = tmp_path / "report.png"
    flags = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             "--enable-logging=stderr", "--v=1"]
    shot = subprocess.run([*flags, f"--screenshot={screenshot}", "--window-size=1280,6000", f"file://{page}"],
                          capture_output=True, text=True, timeout=180)
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    dom = subprocess.run([*flags, "--dump-dom", f"file://{page}"], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for log in (shot.stderr, dom.stderr):
        console = [line for line in log.splitlines() if ":CONSOLE" in line]
        loads = [line for line in log.splitlines() if "FileURLLoader::Start" in line and not line.endswith(page)]
        assert not console and not loads, console + loads  # no script errors, nothing loaded beside the page
    for section in ("run", "data", "tuning", "training", "verdict", "pictures", "serving"):
        assert f'<section id="{section}">' in dom.stdout
    picture = Image.open(screenshot).convert("RGB")
    assert picture.size == (1280, 6000)
    assert len(picture.getcolors(1 << 20) or []) > 1000  # rendered pictures and text, not a blank page
    kept = os.path.join(os.environ.get("REPORT_SCREENSHOT_DIR", tempfile.gettempdir()), "colorization-report.png")
    shutil.copyfile(screenshot, kept)
    with capsys.disabled():
        print(f"\nreport screenshot: {screenshot}, copied to {kept}")


def test_the_last_kubeflow_step_writes_the_report_from_the_stage_dirs(first_run, tmp_path):
    """A Kubeflow run has no local manifest: each stage wrote RUN_DIR/<stage>; the last step builds the report."""
    from pipeline import config as cfg
    from pipeline import stage as stage_cli

    out, m = first_run
    run_dir = tmp_path / "runs" / "job-7"
    run_dir.mkdir(parents=True)
    for name in STAGES:
        (run_dir / name).symlink_to(m["stages"][name]["outputs"]["dir"])
    config, _, _ = cfg.parse_args(["--output_dir", out, *TINY])
    artifact = tmp_path / "outputs" / "report" / "report.html"
    assert stage_cli.write_run_report(config, str(run_dir), "job-7", ["--runner=DirectRunner"], str(artifact)) == \
        str(artifact)
    with open(artifact, encoding="utf-8") as f:
        page = _Page(f.read())
    assert page.stages == {name: "succeeded" for name in STAGES} and page.verdict in ("BLESSED", "NOT_BLESSED")
    with open(m["stages"]["evaluate"]["outputs"]["metrics"]) as f:
        assert float(page.metrics["model.psnr"]) == json.load(f)["model"]["psnr"]
    assert (run_dir / "report.html").is_file() and (run_dir / "manifest.json").is_file()


def test_rerun_is_cached_and_a_deleted_output_recomputes_that_stage_and_after_only(first_run, capsys, monkeypatch):
    from pipeline import report

    out, first = first_run
    capsys.readouterr()
    second = _run(out)
    assert second["run_id"] != first["run_id"]
    assert set(_statuses(second).values()) == {"cached"}
    summary = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(summary) if line.startswith(f"pipeline: run {second['run_id']} done"))
    report_path = os.path.join(out, "runs", second["run_id"], "report.html")
    assert summary[header + 1].split()[:2] == ["report", report_path]  # named first
    with open(report_path, encoding="utf-8") as f:
        page = _Page(f.read())
    assert page.stages == {name: "cached" for name in STAGES} and page.verdict  # the sections read the cached outputs

    shutil.rmtree(first["stages"]["evaluate"]["outputs"]["dir"])

    def broken(manifest):
        raise RuntimeError("a report bug")

    monkeypatch.setattr(report, "build", broken)  # a report that cannot be built costs one line, not the run
    third = _run(out)
    assert "report: the run report could not be written (RuntimeError: a report bug)" in capsys.readouterr().err
    statuses = _statuses(third)
    assert all(statuses[s] == "cached" for s in STAGES[:6]), statuses
    assert statuses["evaluate"] == statuses["push"] == "succeeded"
    assert third["stages"]["evaluate"]["metrics"]["baseline_model"]  # version 1 is now the last blessed model
    assert third["stages"]["push"]["metrics"]["version"] == 2
