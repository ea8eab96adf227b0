"""The Kubeflow Pipelines v2 spec, tested by compiling only: tasks, dependencies, and each step's CLI."""

from __future__ import annotations

import sys

import pytest
import yaml

from pipeline import config as cfg
from pipeline import dag, kubeflow

MODULES = {
    "synthetic": "components.synthetic", "ingest": "components.example_gen", "validate": "components.validator",
    "tune": "components.tuner", "train": "components.trainer", "evaluate": "components.evaluator",
    "push": "components.pusher",
}
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
    assert set(quick["tasks"]) == {s.name for s in stages} == set(MODULES)
    for stage in stages:
        assert sorted(quick["tasks"][stage.name].get("dependentTasks", [])) == sorted(stage.inputs)
    assert quick["spec"]["root"]["inputDefinitions"]["parameters"]["pipeline_root"]["defaultValue"] == \
        "gs://bucket/colorization"


def test_each_container_runs_its_stage_cli_from_the_image(quick):
    for name, container in quick["containers"].items():
        assert container["command"] == ["python", "-m", MODULES[name]], name
        assert container["image"] == "registry.example/colorization:1"


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_stages_pass_data_through_run_dirs_on_the_pipeline_root(quick):
    c = {name: container["args"] for name, container in quick["containers"].items()}
    run = f"{ROOT_PLACEHOLDER}/runs/{{{{$.inputs.parameters['run_id']}}}}"
    assert _arg(c["synthetic"], "--output_dir") == f"{run}/synthetic"
    assert _arg(c["ingest"], "--data_dir") == f"synthetic={run}/synthetic"
    assert _arg(c["ingest"], "--output_dir") == _arg(c["validate"], "--output_dir") == f"{run}/ingest"
    assert _arg(c["tune"], "--examples") == _arg(c["train"], "--examples") == _arg(c["evaluate"], "--examples")
    assert _arg(c["train"], "--hparams") == f"{run}/tune/best_hparams.json"
    assert _arg(c["evaluate"], "--model") == _arg(c["push"], "--model") == f"{run}/train/model.keras"
    assert _arg(c["push"], "--evaluation") == _arg(c["evaluate"], "--output_dir") == f"{run}/evaluate"
    assert _arg(c["push"], "--serving_dir") == f"{ROOT_PLACEHOLDER}/serving"
    assert _arg(c["evaluate"], "--baseline_model") == f"{ROOT_PLACEHOLDER}/serving/colorizer"
    assert "--baseline_optional" in c["evaluate"]  # the first run has nothing blessed to compare with
    for task in quick["tasks"].values():
        assert task["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


def test_beam_options_reach_the_beam_steps_only(quick):
    c = {name: container["args"] for name, container in quick["containers"].items()}
    for name in ("ingest", "validate"):
        assert c[name][-len(BEAM):] == BEAM
    for name in ("synthetic", "tune", "train", "evaluate", "push"):
        assert "--runner=DataflowRunner" not in c[name]


def test_every_step_is_accepted_by_its_components_own_parser(quick, monkeypatch):
    from components import evaluator, example_gen, pusher, synthetic, trainer, tuner, validator

    c = {name: container["args"] for name, container in quick["containers"].items()}
    _, beam_args = example_gen._build_parser().parse_known_args(c["ingest"])
    assert beam_args == BEAM
    ingest = example_gen.config_from_args(example_gen._build_parser().parse_known_args(c["ingest"])[0])
    assert (ingest.stored_size, ingest.min_side) == (80, 64)
    tune = tuner._build_parser().parse_args(c["tune"])
    assert (tune.model, tune.fix, tune.max_trials, tune.image_size) == ("model1", ["width=0.5"], 2, 64)
    train = trainer._parser().parse_args(c["train"])
    assert (train.epochs, train.steps_per_epoch, train.image_size, train.seed) == (12, 20, 64, 0)
    evaluation = evaluator._parser().parse_args(c["evaluate"])
    assert evaluation.split == "test" and evaluation.max_psnr_drop_db == 0.1
    push = pusher._parser().parse_args(c["push"])
    assert push.model_name == "colorizer"

    calls = {}
    monkeypatch.setattr(synthetic, "generate", lambda out, n, **kw: calls.setdefault("synthetic", (n, kw)) and [])
    assert synthetic.main(c["synthetic"]) == 0
    assert calls["synthetic"] == (400, {"seed": 0, "size": 80, "png_fraction": 0.1, "workers": 1})
    report = {"records_read": {}, "records_checked": {}, "anomalies": []}
    monkeypatch.setattr(validator, "run_validation",
                        lambda out, beam, **kw: calls.setdefault("validate", (beam, kw)) and report)
    assert validator.main(c["validate"]) == 0
    assert calls["validate"] == (BEAM, {"sample_rate": 1.0})


def test_report_model2_on_real_data_with_gpus_and_a_volume(tmp_path):
    spec = compile_spec(
        tmp_path, ["--preset", "report-model2", "--data_dir", "lfw=/mnt/data/lfw", "--data_dir",
                   "flickr8k=/mnt/data/flickr8k"],
        pipeline_root="/mnt/data/colorization", pvc="colorization-data", gpus=1,
    )
    assert set(spec["tasks"]) == {"ingest", "validate", "train", "evaluate", "push"}  # no synthetic data, no tuning
    assert sorted(spec["tasks"]["train"]["dependentTasks"]) == ["ingest", "validate"]
    ingest = spec["containers"]["ingest"]["args"]
    assert [ingest[i + 1] for i, a in enumerate(ingest) if a == "--data_dir"] == [
        "lfw=/mnt/data/lfw", "flickr8k=/mnt/data/flickr8k"]
    assert _arg(ingest, "--limit") == "1920" and _arg(ingest, "--stored_size") == "250"
    train = spec["containers"]["train"]
    assert "--hparams" not in train["args"] and _arg(train["args"], "--model") == "model2"
    assert _arg(train["args"], "--batch_size") == "48" and _arg(train["args"], "--image_size") == "224"
    assert train["resources"]["accelerator"]["count"] == "1"
    assert "resources" not in spec["containers"]["evaluate"]
    mounts = spec["docs"][1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(mounts) == 5 and all(
        m["pvcMount"][0]["mountPath"] == "/mnt/data/colorization" for m in mounts.values())


def test_the_cli_writes_the_spec_and_names_mistakes(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert kubeflow.main(["--output", str(out), "--pipeline_root", "gs://b/c", "--set", "train.epochs=3"]) == 0
    assert "7 steps (synthetic -> ingest -> validate -> tune -> train -> evaluate -> push)" in capsys.readouterr().out
    with open(out) as f:
        spec = yaml.safe_load(f)
    train_args = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["args"]
    assert _arg(train_args, "--epochs") == "3"

    assert kubeflow.main(["--output", str(tmp_path / "x.yaml"), "--pipeline_root", "relative/dir"]) == 2
    assert "must be shared by every step" in capsys.readouterr().err
    no_tune = tmp_path / "no_tune.yaml"
    assert kubeflow.main(["--output", str(no_tune), "--pipeline_root", "gs://b/c", "--no-tune"]) == 0
    with open(no_tune) as f:
        spec = yaml.safe_load(f)
    executors = spec["deploymentSpec"]["executors"]
    assert "exec-tune" not in executors
    train_args = executors["exec-train"]["container"]["args"]
    assert _arg(train_args, "--width") == "0.5" and "--hparams" not in train_args


def test_a_missing_kfp_sdk_is_one_sentence(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "kfp", None)  # import kfp now raises ImportError
    assert kubeflow.main(["--output", str(tmp_path / "p.yaml")]) == 2
    assert capsys.readouterr().err == (
        'kubeflow: the Kubeflow Pipelines SDK is not installed; pip install -c constraints.txt -e ".[kubeflow]".\n')
