"""The whole pipeline end to end on a tiny generated set: every stage runs, the served model answers, caching works."""

from __future__ import annotations

import io
import json
import os
import shutil

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


def test_rerun_is_cached_and_a_deleted_output_recomputes_that_stage_and_after_only(first_run):
    out, first = first_run
    second = _run(out)
    assert second["run_id"] != first["run_id"]
    assert set(_statuses(second).values()) == {"cached"}

    shutil.rmtree(first["stages"]["evaluate"]["outputs"]["dir"])
    third = _run(out)
    statuses = _statuses(third)
    assert all(statuses[s] == "cached" for s in STAGES[:6]), statuses
    assert statuses["evaluate"] == statuses["push"] == "succeeded"
    assert third["stages"]["evaluate"]["metrics"]["baseline_model"]  # version 1 is now the last blessed model
    assert third["stages"]["push"]["metrics"]["version"] == 2
