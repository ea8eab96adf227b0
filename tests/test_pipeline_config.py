"""The typed pipeline config: presets, YAML, --set overrides, the runner's flags, and one-sentence mistakes."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline import config as cfg
from pipeline.config import ConfigError


def test_the_quick_default_is_valid_and_small():
    config, beam_args, flags = cfg.parse_args([])
    assert flags == cfg.RunFlags(preset="quick", config_file=None, no_cache=False) and beam_args == []
    assert config.data.sources == {} and 100 <= config.data.synthetic.num_images <= 1000
    assert 64 <= config.data.synthetic.size <= 96 and config.train.image_size == 64
    assert config.train.model == "model1" and config.train.width == 0.5 and config.tune.enabled
    assert config.serving_dir == "out/serving" and config.push.model_name == "colorizer"
    assert dataclasses.asdict(config.evaluate.thresholds) == {
        "min_psnr_gain_db": -1.0, "min_colorfulness_gain": 0.0, "min_colorfulness_recovered": 0.5,
        "max_psnr_drop_db": 0.1, "max_colorfulness_drop": 1.0,
    }


def test_unknown_flags_go_to_beam_untouched():
    argv = ["--runner=DataflowRunner", "--project", "proj", "--temp_location", "gs://b/tmp", "--no-cache",
            "--direct_num_workers", "2", "--output_dir", "gs://b/out/"]
    config, beam_args, flags = cfg.parse_args(argv)
    assert beam_args == ["--runner=DataflowRunner", "--project", "proj", "--temp_location", "gs://b/tmp",
                         "--direct_num_workers", "2"]
    assert flags.no_cache and config.output_dir == "gs://b/out" and config.serving_dir == "gs://b/out/serving"


def test_set_coerces_values_to_the_field_types():
    config, _, _ = cfg.parse_args([
        "--set", "train.epochs=3", "--set", "train.learning_rate=2e-3", "--set", "tune.enabled=false",
        "--set", "data.limit=100", "--set", "train.steps_per_epoch=none", "--set", "data.sources.lfw=/data/lfw",
        "--set", "evaluate.thresholds.min_psnr_gain_db=0.5", "--set", "train.allow_random_backbone=yes",
        "--set", "train.backbone_weights=none",
    ])
    assert config.train.epochs == 3 and config.train.learning_rate == 0.002 and config.tune.enabled is False
    assert config.data.limit == 100 and config.train.steps_per_epoch is None
    assert config.data.sources == {"lfw": "/data/lfw"} and config.evaluate.thresholds.min_psnr_gain_db == 0.5
    assert config.train.allow_random_backbone is True
    assert config.train.backbone_weights == "none"  # a random backbone, not "unset"


@pytest.mark.parametrize("assignment, words", [
    ("train.epoch=3", ["'train.epoch'", "epochs", "steps_per_epoch"]),
    ("trian.epochs=3", ["'trian'", "train", "evaluate"]),
    ("train.epochs=three", ["train.epochs", "whole number", "'three'"]),
    ("tune.enabled=maybe", ["tune.enabled", "true or false"]),
    ("train.epochs=none", ["train.epochs", "whole number"]),
    ("train=3", ["train is a section", "train.model=VALUE"]),
    ("data.sources=/x", ["data.sources is a mapping", "data.sources.NAME=VALUE"]),
    ("epochs", ["KEY=VALUE"]),
])
def test_set_mistakes_are_one_sentence_naming_the_key(assignment, words):
    with pytest.raises(ConfigError) as e:
        cfg.parse_args(["--set", assignment])
    message = str(e.value)
    assert all(w in message for w in words), message
    assert "\n" not in message and message.endswith(".")


def test_yaml_overrides_the_preset_and_set_overrides_the_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 16\ndata:\n  synthetic:\n    num_images: 200\n"
                    "  sources: {}\nevaluate:\n  thresholds:\n    max_psnr_drop_db: 0.2\n")
    config, _, flags = cfg.parse_args(["--config", str(path), "--set", "train.epochs=9", "--no-tune",
                                       "--output_dir", str(tmp_path / "o")])
    assert config.train.epochs == 9 and config.train.batch_size == 16 and config.data.synthetic.num_images == 200
    assert config.evaluate.thresholds.max_psnr_drop_db == 0.2 and config.tune.enabled is False
    assert flags.config_file == str(path) and config.output_dir == str(tmp_path / "o")
    assert config.train.image_size == 64  # untouched keys keep the preset's value


@pytest.mark.parametrize("text, words", [
    ("train:\n  epoch: 3\n", ["'train.epoch'", "epochs"]),
    ("trainer:\n  epochs: 3\n", ["'trainer'", "train", "top level"]),
    ("train: 3\n", ["train", "mapping"]),
    ("train:\n  epochs: 2.5\n", ["train.epochs", "whole number"]),
    ("- train\n", ["mapping of sections"]),
    ("train: [1,\n", ["not valid YAML", "line"]),
])
def test_yaml_mistakes_are_one_sentence(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        cfg.parse_args(["--config", str(path)])
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.yaml cannot be read"):
        cfg.parse_args(["--config", str(tmp_path / "nope.yaml")])


def test_data_dir_flags_add_named_sources_over_the_synthetic_set():
    config, _, _ = cfg.parse_args(["--data_dir", "lfw=/data/lfw/", "--data_dir", "/photos/mine"])
    assert config.data.sources == {"lfw": "/data/lfw", "mine": "/photos/mine"}


@pytest.mark.parametrize("preset, needed", [("report-model1", ["lfw"]), ("report-model2", ["lfw", "flickr8k"])])
def test_report_presets_need_their_data_sets(preset, needed):
    given = ["--data_dir", "lfw=/data/lfw"] if preset == "report-model2" else []
    with pytest.raises(ConfigError) as e:
        cfg.parse_args(["--preset", preset, *given])
    message = str(e.value)
    assert all(f"--data_dir {n}=PATH" in message for n in needed) and "nothing here downloads" in message
    assert f"(missing: {needed[-1]})" in message and message.endswith(".") and "\n" not in message


def test_report_presets_carry_the_reports_settings():
    one, _, _ = cfg.parse_args(["--preset", "report-model1", "--data_dir", "lfw=/data/lfw"])
    assert (one.train.image_size, one.train.batch_size, one.train.epochs, one.train.model) == (224, 48, 50, "model1")
    assert (one.train.loss, one.train.learning_rate, one.train.width) == ("mse", 1e-3, 1.0)
    assert (one.data.stored_size, one.data.min_side, one.data.limit) == (250, 250, 1920)
    assert not one.tune.enabled and one.train.steps_per_epoch is None and one.train.early_stopping_patience() == 5
    two, _, _ = cfg.parse_args(["--preset", "report-model2", "--data_dir", "lfw=/d/lfw", "--data_dir",
                                "flickr8k=/d/flickr", "--tune"])
    assert two.train.model == "model2" and two.train.backbone_weights == "imagenet" and two.tune.enabled
    assert two.data.sources == {"lfw": "/d/lfw", "flickr8k": "/d/flickr"} and two.train.image_size == 224


@pytest.mark.parametrize("overrides, words", [
    (["train.image_size=96"], ["train.image_size 96", "data.stored_size 80"]),
    (["train.image_size=60"], ["train.image_size", "multiple of 8"]),
    (["ingest.splits=train=90,test=10"], ["ingest.splits", "eval"]),
    (["ingest.splits=train80"], ["ingest.splits"]),
    (["evaluate.split=holdout"], ["evaluate.split 'holdout'", "ingest.splits"]),
    (["data.synthetic.size=48"], ["data.synthetic.size 48", "data.min_side 64"]),
    (["tune.algorithm=grid"], ["tune.algorithm", "random, hyperband, bayesian"]),
    (["train.model=model3"], ["train.model", "model1, model2"]),
    (["train.loss=l1"], ["train.loss", "mse"]),
    (["ingest.validation=some"], ["ingest.validation", "all, sample, none"]),
    (["train.epochs=0"], ["train.epochs", "at least 1"]),
    (["push.model_name=a/b"], ["push.model_name"]),
])
def test_validate_names_the_key_and_the_fix(overrides, words):
    with pytest.raises(ConfigError) as e:
        cfg.parse_args([a for o in overrides for a in ("--set", o)])
    assert all(w in str(e.value) for w in words), str(e.value)


def test_the_sections_are_the_components_own_configs():
    """A setting is declared once, by its component: the section is that dataclass, its defaults the component's."""
    from components import evaluator, pusher, trainer, tuner

    config = cfg.PipelineConfig()
    assert type(config.train) is trainer.TrainConfig and type(config.evaluate) is evaluator.EvalConfig
    assert type(config.push) is pusher.PushConfig and isinstance(config.tune, tuner.TuneConfig)
    assert config.train == trainer.TrainConfig() and config.evaluate.thresholds == evaluator.Thresholds()
    assert cfg.preset("report-model1").train.image_size == trainer.TrainConfig().image_size == 224


@pytest.mark.parametrize("assignment, words", [
    ("train.examples=/x", ["train.examples", "wired by the pipeline"]),
    ("tune.image_size=96", ["tune.image_size follows train.image_size", "set train.image_size instead"]),
    ("evaluate.baseline_model=/m", ["evaluate.baseline_model", "wired by the pipeline"]),
])
def test_keys_the_pipeline_wires_are_not_settable(assignment, words):
    with pytest.raises(ConfigError) as e:
        cfg.parse_args(["--set", assignment])
    assert all(w in str(e.value) for w in words), str(e.value)


def test_every_component_setting_is_a_config_key():
    """What a component can do, the pipeline config can set: e.g. the trainer's precision and reduce-LR."""
    config, _, _ = cfg.parse_args(["--set", "train.precision=float32", "--set", "train.reduce_lr=true",
                                   "--set", "train.distribute=none", "--set", "push.batching.max_batch_size=16"])
    assert (config.train.precision, config.train.reduce_lr, config.train.distribute) == ("float32", True, "none")
    assert config.push.batching["max_batch_size"] == 16
    values = cfg.settings_values(config)
    assert "examples" not in values["train"] and values["train"]["precision"] == "float32"
    assert cfg.from_settings(values) == config


def test_hparams_overrides_pin_only_what_is_set():
    from components import trainer

    train = trainer.TrainConfig(model="model2", width=None, loss="huber", learning_rate=None, batch_size=16)
    assert train.hparams_overrides() == {"family": "model2", "loss": "huber", "batch_size": 16}


def test_the_colorful_preset_trains_the_classification_head_for_a_time_budget():
    config, _, _ = cfg.parse_args(["--preset", "colorful", "--data_dir", "mine=/photos"])
    t = config.train
    assert (t.head, t.model, t.backbone, t.fusion, t.image_size) == (
        "classification", "model2", "mobilenet_v2", "unet", 64)
    assert (t.max_minutes, t.lr_decay, t.keep) == (30, "budget", "last") and not config.tune.enabled
    assert (config.statistics.rebalance_lambda, t.temperature) == (0.6, 0.15)
    assert t.hparams_overrides() | {"fusion": "unet", "head": "classification"} == t.hparams_overrides()
    t.validate("train.")
    with pytest.raises(ConfigError) as e:
        cfg.parse_args(["--set", "train.head=mixture"])
    assert "train.head must be one of regression, classification" in str(e.value)
