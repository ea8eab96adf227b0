"""The run report on runs that went wrong: hostile file names stay text, missing pieces say why, a broken artifact
costs its section only. (The report of a real run, and in a real browser: tests/test_pipeline_e2e.py.)"""

from __future__ import annotations

import json
import os

import pytest

from pipeline import manifest as mf
from pipeline import report

HOSTILE = '<img src=x onerror="alert(1)">&amp;.jpg'


def _stage(out: str, name: str, status: str, **extra) -> dict:
    stage_dir = os.path.join(out, "stages", name, "0123456789abcdef")
    record = {"name": name, "status": status, "cached": status == "cached", "duration_s": 1.5,
              "fingerprint": "f" * 64, "inputs": {}, "external_inputs": {}, "metrics": {}, **extra}
    if status in ("succeeded", "cached"):
        os.makedirs(stage_dir, exist_ok=True)
        record.update(output_dir=stage_dir, outputs={"dir": stage_dir})
    return record


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@pytest.fixture
def failed_run(tmp_path):
    """Ingest cached from an older run with a hostile rejected file, tuning off, training failed, the rest not run."""
    out = str(tmp_path)
    stages = {
        "ingest": _stage(out, "ingest", "cached", produced_by_run="20260101T000000000000Z-abcdef"),
        "validate": _stage(out, "validate", "skipped", skip_reason="ingest.validation is none"),
        "tune": _stage(out, "tune", "skipped", skip_reason="tune.enabled is false"),
        "train": _stage(out, "train", "failed", error="training stopped: the loss became NaN at epoch 3 <b>x</b>."),
        "evaluate": _stage(out, "evaluate", "pending"),
        "push": _stage(out, "push", "pending"),
    }
    ingest = stages["ingest"]["output_dir"]
    _write(os.path.join(ingest, "statistics", "statistics.json"), json.dumps({
        "files": {"found": 3, "written": 1, "rejected": 2, "duplicates": 0, "invariant_holds": True},
        "sources": {HOSTILE: {"found": 3, "written": 1, "rejected": 2, "duplicates": 0, "over_limit": 0,
                              "rejected_by_reason": {"truncated": 1, "grayscale": 1}}},
        "splits": {"train": {"count": 1, "by_source": {HOSTILE: 1}, "mean_colorfulness": 40.0}},
        "l_histogram": {"counts": [0] * 100 + [5] * 156}, "mean_ab": [1.0, -2.0],
    }))
    _write(os.path.join(ingest, "rejected.jsonl"), "\n".join(json.dumps(r) for r in [
        {"path": f"odd/{HOSTILE}", "source": HOSTILE, "reason": "truncated", "detail": "image file is truncated </td>"},
        {"path": "odd/gray.jpg", "source": HOSTILE, "reason": "grayscale", "detail": "colourfulness 0.4 < 3"},
    ]) + "\n")
    manifest = {"run_id": "20260102T000000000000Z-123456", "output_dir": out, "status": "failed",
                "failed_stage": "train", "error": f"stage train failed: {stages['train']['error']}",
                "config": {"output_dir": out, "train": {"model": "model1", "width": 1.0}, "push": {}},
                "beam_args": ["--runner=DirectRunner"], "stages": stages,
                "invocation": {"argv": ["--set", "train.epochs=3", "--no-tune"], "preset": "quick",
                               "overrides": ["train.epochs=3"]}}
    run_dir = mf.run_dir(out, manifest["run_id"])
    mf.write_json_atomic(os.path.join(run_dir, mf.MANIFEST_FILE), manifest)
    mf.set_latest(out, manifest["run_id"])
    return out, run_dir


def _section(page: str, name: str) -> str:
    start = page.index(f'<section id="{name}">')
    return page[start:page.index("</section>", start)]


def test_file_names_and_messages_from_artifacts_stay_text(failed_run):
    out, run_dir = failed_run
    page = open(report.write_report(out), encoding="utf-8").read()
    assert "<img src=x" not in page and "<b>x</b>" not in page and "</td>\"" not in page
    assert html_escaped(HOSTILE) in _section(page, "data")  # the file, its source and the reason are all shown
    assert "image file is truncated &lt;/td&gt;" in _section(page, "data")
    assert page.count("<img ") == 1  # the L histogram: the pictures that exist, and no injected one
    assert "&lt;b&gt;x&lt;/b&gt;" in page


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_missing_pieces_say_why_and_the_rest_is_still_shown(failed_run):
    out, run_dir = failed_run
    path = report.write_report(os.path.join(out, "runs", "latest"))
    assert path == os.path.join(run_dir, "report.html")
    page = open(path, encoding="utf-8").read()
    data = _section(page, "data")
    assert "came from the cache: produced by run 20260101T000000000000Z-abcdef" in data
    assert "rejected: grayscale" in data and "rejected: truncated" in data
    assert "The validate stage was skipped: ingest.validation is none." in data
    assert "The tune stage was skipped: tune.enabled is false." in _section(page, "tuning")
    assert "The train stage failed: training stopped: the loss became NaN at epoch 3" in _section(page, "training")
    for name in ("verdict", "pictures"):
        assert "The evaluate stage did not run: the run stopped at stage train." in _section(page, name)
    assert "The push stage did not run" in _section(page, "serving")
    run = _section(page, "run")
    assert "stage train failed: training stopped" in run and "train.epochs=3" in run
    assert 'data-stage="evaluate" data-status="pending"' in run


def test_an_unreadable_artifact_costs_its_section_only(failed_run):
    out, run_dir = failed_run
    manifest = json.loads(mf.read_text(os.path.join(run_dir, mf.MANIFEST_FILE)))
    manifest["stages"]["evaluate"] = _stage(out, "evaluate", "succeeded")
    _write(os.path.join(manifest["stages"]["evaluate"]["output_dir"], "metrics.json"), "{not json")
    _write(os.path.join(manifest["stages"]["evaluate"]["output_dir"], "blessing.json"), "{}")
    mf.write_json_atomic(os.path.join(run_dir, mf.MANIFEST_FILE), manifest)
    page = open(report.write_report(run_dir), encoding="utf-8").read()
    assert "This section could not be built: JSONDecodeError" in _section(page, "verdict")
    assert "could not be built" not in _section(page, "data")


def test_the_cli_names_a_wrong_dir_and_a_run_never_fails_for_its_report(tmp_path, capsys):
    assert report.main([str(tmp_path / "nowhere")]) == 2
    assert "is not a run dir" in capsys.readouterr().err
    lines = []
    assert report.write_quietly(str(tmp_path / "nowhere"), log=lines.append) is None
    assert len(lines) == 1 and lines[0].startswith("report: the run report could not be written (ReportError:")


def test_the_verdict_against_the_last_blessed_model_and_historical_photos_beside_their_gray(failed_run):
    import base64
    import io
    import re

    import numpy as np
    from PIL import Image

    out, run_dir = failed_run
    manifest = json.loads(mf.read_text(os.path.join(run_dir, mf.MANIFEST_FILE)))
    manifest["stages"]["evaluate"] = _stage(out, "evaluate", "succeeded")
    evaluation = manifest["stages"]["evaluate"]["output_dir"]
    scores = {"model": {"psnr": 21.25, "colorfulness_ratio": 0.31}, "gray": {"psnr": 22.5, "colorfulness_ratio": 0.0},
              "baseline": {"psnr": 21.75, "colorfulness_ratio": 0.42}}
    _write(os.path.join(evaluation, "metrics.json"), json.dumps({**scores, "images": 9, "split": "test",
                                                                 "baseline_model": "out/serving/colorizer/4"}))
    _write(os.path.join(evaluation, "blessing.json"), json.dumps({"blessed": False, "reason": "not blessed: too dull.",
                                                                  "checks": [{"name": "colorfulness_recovered",
                                                                              "passed": False, "detail": "31% < 50%"}]}))
    rng = np.random.default_rng(0)
    for name in ("test_grid.png", "historical/old <1>.png", "historical/old 2.png"):
        os.makedirs(os.path.dirname(os.path.join(evaluation, name)), exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(os.path.join(evaluation, name))
    mf.write_json_atomic(os.path.join(run_dir, mf.MANIFEST_FILE), manifest)

    page = open(report.write_report(run_dir), encoding="utf-8").read()
    verdict = _section(page, "verdict")
    assert 'data-verdict="NOT_BLESSED"' in verdict and "not blessed: too dull." in verdict
    assert 'data-metric="baseline.psnr" data-value="21.75">21.75<' in verdict
    assert 'data-metric="baseline.colorfulness_ratio" data-value="0.42">42%<' in verdict
    assert 'data-check="colorfulness_recovered" data-passed="false"' in verdict and "31% &lt; 50%" in verdict
    pictures = _section(page, "pictures")
    images = dict((alt, src) for src, alt in re.findall(r'<img src="([^"]+)" alt="([^"]+)"', pictures))
    assert set(images) == {"the test grid", "old &lt;1&gt;.png, gray", "old &lt;1&gt;.png, colorized",
                           "old 2.png, gray", "old 2.png, colorized"}
    gray = Image.open(io.BytesIO(base64.b64decode(images["old 2.png, gray"].split(",", 1)[1])))
    colour = Image.open(io.BytesIO(base64.b64decode(images["old 2.png, colorized"].split(",", 1)[1])))
    assert gray.mode == "L" and colour.mode == "RGB" and gray.size == colour.size == (90, 60)
