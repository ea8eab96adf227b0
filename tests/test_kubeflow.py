"""The Kubeflow Pipelines v2 spec, tested by compiling only: tasks, dependencies, and each step's command line,
which runs the same stage adapter with the same settings as a local run."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from pipeline import config as cfg
from pipeline import dag, kubeflow
from pipeline import stage as stage_cli

STAGES = ("synthetic", "ingest", "validate", "statistics", "tune", "train", "evaluate", "push")
BEAM = ["--runner=DataflowRunner", "--project", "proj", "--temp_location", "gs://bucket/tmp"]
ROOT_PLACEHOLDER = "{{$.inputs.parameters['pipeline_root']}}"


def compile_spec(tmp_path, argv, **kwargs) -> dict:
    config, beam_args, _ = cfg.parse_args(argv)
    path = kubeflow.compile_pipeline(config, str(tmp_path / "pipeline.yaml"), beam_args=beam_args, **kwargs)
    with open(path) as f:
        docs = list(yaml.safe_load_all(f))
    spec = docs[0]
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    containers = {
        name: executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]["container"]
        for name, task in tasks.items()
    }
    return {"spec": spec, "docs": docs, "tasks": tasks, "containers": containers}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return compile_spec(tmp_path_factory.mktemp("kfp"), BEAM, image="registry.example/colorization:1",
                        pipeline_root="gs://bucket/colorization")


def test_one_task_per_stage_in_the_right_dag(quick):
    config, _, _ = cfg.parse_args([])
    stages = dag.build_stages(config)
    assert set(quick["tasks"]) == {s.name for s in stages} == set(STAGES)
    for stage in stages:
        assert sorted(quick["tasks"][stage.name].get("dependentTasks", [])) == sorted(stage.upstream)
    assert quick["spec"]["root"]["inputDefinitions"]["parameters"]["pipeline_root"]["defaultValue"] == \
        "gs://bucket/colorization"


def test_each_container_runs_its_stage_adapter_from_the_image(quick):
    for name, container in quick["containers"].items():
        assert container["command"] == ["python", "-m", "pipeline.stage"], name
        assert container["args"][0] == name
        assert container["image"] == "registry.example/colorization:1"


def _inputs(args: list[str]) -> dict[str, str]:
    return dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--input")


def _settings(args: list[str]) -> dict:
    return json.loads(_arg(args, "--config_json"))


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_stages_pass_data_through_run_dirs_on_the_pipeline_root(quick):
    c = {name: container["args"] for name, container in quick["containers"].items()}
    run = f"{ROOT_PLACEHOLDER}/runs/{{{{$.inputs.parameters['run_id']}}}}"
    for name in STAGES:
        assert _arg(c[name], "--output_dir") == f"{run}/{name}"
        assert _arg(c[name], "--set") == f"output_dir={ROOT_PLACEHOLDER}"  # serving/ lives on the pipeline root
    assert _inputs(c["synthetic"]) == {}
    assert _inputs(c["ingest"]) == {"synthetic": f"{run}/synthetic"}
    assert _inputs(c["validate"]) == {"ingest": f"{run}/ingest"}
    assert _inputs(c["statistics"]) == {"ingest": f"{run}/ingest"}
    assert _inputs(c["tune"]) == {"ingest": f"{run}/ingest", "statistics": f"{run}/statistics",
                                  "validate": f"{run}/validate"}
    assert _inputs(c["train"]) == {"ingest": f"{run}/ingest", "tune": f"{run}/tune", "statistics": f"{run}/statistics",
                                   "validate": f"{run}/validate"}
    assert _inputs(c["evaluate"]) == {"train": f"{run}/train", "ingest": f"{run}/ingest",
                                      "statistics": f"{run}/statistics"}
    assert _inputs(c["push"]) == {"train": f"{run}/train", "evaluate": f"{run}/evaluate"}
    for task in quick["tasks"].values():
        assert task["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


def test_the_last_step_has_the_run_report_as_an_html_artifact(quick):
    """The Kubeflow UI shows a step's system.HTML output artifact: push writes the run report there."""
    c = {name: container["args"] for name, container in quick["containers"].items()}
    run = f"{ROOT_PLACEHOLDER}/runs/{{{{$.inputs.parameters['run_id']}}}}"
    components = quick["spec"]["components"]
    outputs = {name: components[task["componentRef"]["name"]].get("outputDefinitions", {}).get("artifacts", {})
               for name, task in quick["tasks"].items()}
    assert outputs["push"] == {"report": {"artifactType": {"schemaTitle": "system.HTML", "schemaVersion": "0.0.1"}}}
    assert _arg(c["push"], "--report_html") == "{{$.outputs.artifacts['report'].path}}"
    assert _arg(c["push"], "--run_dir") == run
    assert [name for name in STAGES if outputs[name] or "--report_html" in c[name]] == ["push"]


def test_beam_options_reach_the_beam_steps_only(quick):
    c = {name: container["args"] for name, container in quick["containers"].items()}
    for name in ("ingest", "validate"):
        assert c[name][-len(BEAM):] == BEAM
    for name in ("synthetic", "statistics", "tune", "train", "evaluate", "push"):
        assert "--runner=DataflowRunner" not in c[name]


def test_every_step_runs_the_local_adapter_with_the_local_settings(quick, tmp_path, monkeypatch):
    """Each step's arguments give pipeline.stage the same config and wiring the local runner uses."""
    from components import synthetic, validator

    local, _, _ = cfg.parse_args(BEAM)
    c = {name: container["args"] for name, container in quick["containers"].items()}
    for name, args in c.items():
        args = [a.replace(ROOT_PLACEHOLDER, "gs://bucket/colorization") for a in args]
        parsed, beam_args = stage_cli._parser().parse_known_args(args)
        stage, ctx = stage_cli.build_context(parsed, beam_args)
        assert stage.name == name and ctx.beam_args == (BEAM if stage.beam else [])
        assert cfg.settings_values(ctx.config) == {**cfg.settings_values(local), "output_dir": "gs://bucket/colorization"}
        assert ctx.config.serving_dir == "gs://bucket/colorization/serving"
    train_stage, train_ctx = stage_cli.build_context(stage_cli._parser().parse_args(c["train"]), [])
    assert train_ctx.input("hparams").endswith("/tune/best_hparams.json")
    assert train_ctx.input("examples").endswith("/ingest")
    assert (train_ctx.config.train.epochs, train_ctx.config.train.steps_per_epoch, train_ctx.config.train.image_size,
            train_ctx.config.train.seed) == (12, 20, 64, 0)
    _, evaluate_ctx = stage_cli.build_context(stage_cli._parser().parse_args(c["evaluate"]), [])
    assert evaluate_ctx.input("model").endswith("/train/model.keras")
    assert evaluate_ctx.config.evaluate.split == "test" and evaluate_ctx.config.evaluate.thresholds.max_psnr_drop_db == 0.1

    calls = {}
    monkeypatch.setattr(synthetic, "generate", lambda out, n, **kw: calls.setdefault("synthetic", (n, kw)) and [])
    out = tmp_path / "synthetic"
    assert stage_cli.main([*c["synthetic"][:-2], "--output_dir", str(out)]) == 0
    assert calls["synthetic"] == (400, {"seed": 0, "size": 80, "workers": 1})
    report = {"records_read": {}, "records_checked": {}, "anomalies": []}
    monkeypatch.setattr(validator, "run_validation",
                        lambda examples, beam, **kw: calls.setdefault("validate", (examples, beam, kw)) and report)
    validate_args = [a for a in c["validate"] if a not in BEAM]
    i = validate_args.index("--output_dir")
    validate_args[i + 1] = str(tmp_path / "validate")
    assert stage_cli.main([*validate_args, *BEAM]) == 0
    examples, beam, kw = calls["validate"]
    assert examples.endswith("/ingest") and beam == BEAM
    assert kw == {"sample_rate": 1.0, "stored_size": 80, "report_dir": str(tmp_path / "validate")}


def test_report_model2_on_real_data_with_gpus_and_a_volume(tmp_path):
    spec = compile_spec(
        tmp_path, ["--preset", "report-model2", "--data_dir", "lfw=/mnt/data/lfw", "--data_dir",
                   "flickr8k=/mnt/data/flickr8k"],
        pipeline_root="/mnt/data/colorization", pvc="colorization-data", gpus=1,
    )
    assert set(spec["tasks"]) == {"ingest", "validate", "statistics", "train", "evaluate", "push"}  # no synthetic, tuning
    assert sorted(spec["tasks"]["train"]["dependentTasks"]) == ["ingest", "statistics", "validate"]
    data = _settings(spec["containers"]["ingest"]["args"])["data"]
    assert data["sources"] == {"lfw": "/mnt/data/lfw", "flickr8k": "/mnt/data/flickr8k"}
    assert data["limit"] == 1920 and data["stored_size"] == 250
    train = spec["containers"]["train"]
    assert "tune" not in _inputs(train["args"]) and _settings(train["args"])["train"]["model"] == "model2"
    train_settings = _settings(train["args"])["train"]
    assert train_settings["batch_size"] == 48 and train_settings["image_size"] == 224
    assert train["resources"]["accelerator"]["count"] == "1"
    assert "resources" not in spec["containers"]["evaluate"]
    mounts = spec["docs"][1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(mounts) == 6 and all(
        m["pvcMount"][0]["mountPath"] == "/mnt/data/colorization" for m in mounts.values())


def test_the_cli_writes_the_spec_and_names_mistakes(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert kubeflow.main(["--output", str(out), "--pipeline_root", "gs://b/c", "--set", "train.epochs=3"]) == 0
    assert ("8 steps (synthetic -> ingest -> validate -> statistics -> tune -> train -> evaluate -> push)"
            in capsys.readouterr().out)
    with open(out) as f:
        spec = yaml.safe_load(f)
    train_args = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["args"]
    assert _settings(train_args)["train"]["epochs"] == 3

    assert kubeflow.main(["--output", str(tmp_path / "x.yaml"), "--pipeline_root", "relative/dir"]) == 2
    assert "must be shared by every step" in capsys.readouterr().err
    no_tune = tmp_path / "no_tune.yaml"
    assert kubeflow.main(["--output", str(no_tune), "--pipeline_root", "gs://b/c", "--no-tune"]) == 0
    with open(no_tune) as f:
        spec = yaml.safe_load(f)
    executors = spec["deploymentSpec"]["executors"]
    assert "exec-tune" not in executors
    train_args = executors["exec-train"]["container"]["args"]
    assert _settings(train_args)["train"]["width"] == 0.5 and "tune" not in _inputs(train_args)


def test_a_missing_kfp_sdk_is_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "kfp", None)  # import kfp now raises ImportError
    assert kubeflow.main(["--output", str(tmp_path / "p.yaml")]) == 2
    assert capsys.readouterr().err == (
        'kubeflow: the Kubeflow Pipelines SDK is not installed; pip install -c constraints.txt -e ".[kubeflow]".\n')
