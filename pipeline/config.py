"""The pipeline's one typed config: nested dataclasses, presets, YAML and `--set key=value` overrides.

Precedence, lowest first: the preset, `--config FILE` (YAML, the same nesting
as the dataclasses), `--set key=value` (dotted keys, values coerced to the
field's type, `none` for an optional field), then the dedicated flags
(`--data_dir`, `--output_dir`, `--tune/--no-tune`). `validate()` runs once, on
the result. Every flag this parser does not know is a Beam option and is
passed through untouched.

    python -m pipeline.run                                   # the quick preset: synthetic data, minutes on 2 cores
    python -m pipeline.run --preset report-model1 --data_dir lfw=/data/lfw --output_dir out/report1
    python -m pipeline.run --preset report-model2 --data_dir lfw=/data/lfw \\
        --data_dir flickr8k=/data/Flicker8k_Dataset --set train.backbone_weights=/models/irv2.h5
    python -m pipeline.run --config my.yaml --set train.epochs=20 --set evaluate.thresholds.min_psnr_gain_db=0.5 \\
        --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing

Presets:
- `quick` (default): the built-in synthetic set, 400 scenes of 80x80
  (about 320 train / 40 eval / 40 test after the split), Model 1 at width 0.5
  on 64x64 crops, two one-epoch tuning trials of 10 steps, then 12 epochs of
  20 steps. Measured on 2 CPU cores from an empty output dir: 191 s in all
  (generate 1 s, ingest 7 s, validate 1 s, tune 35 s, train 131 s, evaluate
  3 s, push 9 s); the model scored 25.8 dB PSNR against gray's 15.3 and
  colourfulness 81.1 against the truth's 86.0 on the 40 test images
  (blessed). A re-run comes from the cache in about a second.
- `report-model1`: the report's Model 1 on LFW: stored 250x250 (LFW's own
  size, images under 250 dropped), random 224x224 crops, 1,920 images
  (`--limit 1920`, a stable sample, as the report's subset), MSE, Adam 1e-3,
  batch 48, up to 50 epochs with EarlyStopping (patience 5: the report does
  not give its value), no tuning. The
  report split its 1,920 images 80/20 train/validation and colored 50 other
  images; here the same 1,920 are split 80/10/10 train/eval/test and the
  test split is what the evaluator measures.
- `report-model2`: the same with the fusion Model 2 (frozen
  InceptionResNetV2, ImageNet weights from the Keras cache) on LFW plus
  flickr8k, 1,920 images from each.
"""

from __future__ import annotations

import argparse
import dataclasses
import posixpath
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, Union, get_args, get_origin, get_type_hints

# Annotations use Optional/Dict so typing.get_type_hints can evaluate them on Python 3.9 too.

ALGORITHMS = ("random", "hyperband", "bayesian")
"""components.tuner.ALGORITHMS, repeated so the config loads without TensorFlow; a test keeps them equal."""
VALIDATION_MODES = ("all", "sample", "none")
MODELS = ("model1", "model2")
"""components.models.FAMILIES, repeated for the same reason."""
SSIM_MIN_SIZE = 16
"""Smallest training crop the evaluator can measure (SSIM's 11x11 window), as a multiple of 8."""


class ConfigError(Exception):
    """A config mistake the user can fix; the message is one sentence naming the key and the fix."""


# ---------------------------------------------------------------- sections


@dataclass
class SyntheticSection:
    """The built-in data set, generated when no --data_dir is given (components.synthetic)."""

    num_images: int = 400
    size: int = 80
    seed: int = 0

    def validate(self) -> None:
        _at_least("data.synthetic.num_images", self.num_images, 10)
        _at_least("data.synthetic.size", self.size, 8)
        _at_least("data.synthetic.seed", self.seed, 0)


@dataclass
class DataSection:
    """Where images come from and how example_gen stores them."""

    sources: Dict[str, str] = field(default_factory=dict)
    """Source name -> image folder (local or gs://); empty: the synthetic set."""
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)
    stored_size: int = 80
    min_side: int = 64
    limit: Optional[int] = None
    """At most this many images per source (a stable sample); the report used 1920."""
    min_colorfulness: float = 3.0

    def validate(self) -> None:
        for name, path in self.sources.items():
            if not name or "/" in name or ":" in name or not path:
                raise ConfigError(f"data source {name!r}={path!r} is not NAME=PATH; pass --data_dir NAME=PATH.")
        self.synthetic.validate()
        _at_least("data.stored_size", self.stored_size, 8)
        _at_least("data.min_side", self.min_side, 1)
        if self.limit is not None:
            _at_least("data.limit", self.limit, 1)
        if not self.sources and self.synthetic.size < self.min_side:
            raise ConfigError(
                f"data.synthetic.size {self.synthetic.size} is under data.min_side {self.min_side}, so every "
                "generated image would be rejected; raise data.synthetic.size or lower data.min_side."
            )


@dataclass
class IngestSection:
    """How example_gen splits the records and how the validator checks them."""

    splits: str = "train=80,eval=10,test=10"
    validation: str = "all"
    """all: check every record against the schema; sample: a stable sample; none: skip the validate stage."""
    validation_sample_rate: float = 0.1

    def split_weights(self) -> dict[str, int]:
        from components.example_gen import IngestError, parse_splits

        try:
            return dict(parse_splits(self.splits))
        except IngestError as e:
            raise ConfigError(f"ingest.splits: {e}") from None

    def validate(self) -> None:
        _choice("ingest.validation", self.validation, VALIDATION_MODES)
        if not 0.0 < self.validation_sample_rate <= 1.0:
            raise ConfigError(
                f"ingest.validation_sample_rate must be in (0, 1], got {self.validation_sample_rate}."
            )
        weights = self.split_weights()
        missing = [s for s in ("train", "eval") if weights.get(s, 0) <= 0]
        if missing:
            raise ConfigError(
                f"ingest.splits {self.splits!r} gives no share to {' and '.join(missing)}, which training needs; "
                "write it like train=80,eval=10,test=10."
            )


@dataclass
class TuneSection:
    """keras-tuner search (components.tuner); train.model and any of train.width/loss/learning_rate/batch_size
    that are set are pinned, the rest of components.hparams.SEARCH_SPACE is searched."""

    enabled: bool = True
    algorithm: str = "random"
    max_trials: int = 2
    epochs: int = 1
    steps_per_epoch: Optional[int] = 10

    def validate(self) -> None:
        _choice("tune.algorithm", self.algorithm, ALGORITHMS)
        _at_least("tune.max_trials", self.max_trials, 1)
        _at_least("tune.epochs", self.epochs, 1)
        if self.steps_per_epoch is not None:
            _at_least("tune.steps_per_epoch", self.steps_per_epoch, 1)


@dataclass
class TrainSection:
    """components.trainer; width, loss and learning_rate override the hyperparameters (None: the tuner's, or
    the report's defaults when tuning is off)."""

    model: str = "model1"
    width: Optional[float] = 0.5
    loss: Optional[str] = None
    learning_rate: Optional[float] = None
    image_size: int = 64
    epochs: int = 12
    steps_per_epoch: Optional[int] = 20
    validation_steps: Optional[int] = None
    batch_size: Optional[int] = None
    backbone_weights: str = "imagenet"
    """Model 2's backbone: imagenet (from the Keras cache, never downloaded), a .h5 path, or none (random)."""
    allow_random_backbone: bool = False
    patience: int = 5
    seed: Optional[int] = 0

    def hparams_overrides(self) -> dict[str, Any]:
        """The hyperparameters this section pins (family always), in components.hparams' names."""
        pinned = {"family": self.model, "width": self.width, "loss": self.loss,
                  "learning_rate": self.learning_rate, "batch_size": self.batch_size}
        return {k: v for k, v in pinned.items() if v is not None}

    def validate(self) -> None:
        from components import hparams

        _choice("train.model", self.model, MODELS)
        if self.image_size < SSIM_MIN_SIZE or self.image_size % 8:
            raise ConfigError(
                f"train.image_size must be a multiple of 8 and at least {SSIM_MIN_SIZE} (the models downsample by 8, "
                f"the evaluator's SSIM needs 11 pixels), got {self.image_size}."
            )
        for name in ("epochs", "steps_per_epoch", "validation_steps", "batch_size"):
            value = getattr(self, name)
            if value is not None:
                _at_least(f"train.{name}", value, 1)
        _at_least("train.patience", self.patience, 0)
        if self.width is not None and self.width <= 0:
            raise ConfigError(f"train.width must be positive, got {self.width}.")
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be positive, got {self.learning_rate}.")
        if self.loss is not None:
            _choice("train.loss", self.loss, hparams.SEARCH_SPACE["loss"][1])
        if not self.backbone_weights:
            raise ConfigError(
                "train.backbone_weights is empty; use imagenet, a .h5 path, or none for a random backbone."
            )


@dataclass
class ThresholdsSection:
    """The evaluator's blessing thresholds (components.evaluator.Thresholds)."""

    min_psnr_gain_db: float = 0.0
    min_colorfulness_gain: float = 0.0
    max_psnr_drop_db: float = 0.1
    max_colorfulness_drop: float = 1.0


@dataclass
class EvaluateSection:
    """components.evaluator: the split it measures, the pictures it writes, the blessing thresholds."""

    split: str = "test"
    max_images: Optional[int] = None
    grid_images: int = 50
    historical_dir: Optional[str] = None
    """A folder of black-and-white photos to colorize at their own resolution."""
    thresholds: ThresholdsSection = field(default_factory=ThresholdsSection)

    def validate(self) -> None:
        if self.max_images is not None:
            _at_least("evaluate.max_images", self.max_images, 1)
        _at_least("evaluate.grid_images", self.grid_images, 1)


@dataclass
class PushSection:
    """components.pusher: the TF Serving model base path is <serving_dir>/<model_name>/."""

    model_name: str = "colorizer"
    serving_dir: Optional[str] = None
    """None: <output_dir>/serving."""

    def validate(self) -> None:
        if not self.model_name or "/" in self.model_name:
            raise ConfigError(f"push.model_name must be a plain name such as colorizer, got {self.model_name!r}.")


@dataclass
class PipelineConfig:
    """Everything one pipeline run needs; `validate()` once after the overrides."""

    output_dir: str = "out"
    data: DataSection = field(default_factory=DataSection)
    ingest: IngestSection = field(default_factory=IngestSection)
    tune: TuneSection = field(default_factory=TuneSection)
    train: TrainSection = field(default_factory=TrainSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    push: PushSection = field(default_factory=PushSection)

    @property
    def serving_dir(self) -> str:
        return self.push.serving_dir or posixpath.join(self.output_dir, "serving")

    def validate(self) -> "PipelineConfig":
        """Check every section and the rules between them; returns self."""
        if not self.output_dir:
            raise ConfigError("output_dir is empty; pass --output_dir DIR.")
        for section in (self.data, self.ingest, self.tune, self.train, self.evaluate, self.push):
            section.validate()
        if self.train.image_size > self.data.stored_size:
            raise ConfigError(
                f"train.image_size {self.train.image_size} is larger than data.stored_size {self.data.stored_size}, "
                "the side of the stored crops; lower the one or raise the other."
            )
        if self.ingest.split_weights().get(self.evaluate.split, 0) <= 0:
            raise ConfigError(
                f"evaluate.split {self.evaluate.split!r} gets no share in ingest.splits {self.ingest.splits!r}; "
                "add it there or pick another split."
            )
        return self


# ---------------------------------------------------------------- presets


def _quick() -> PipelineConfig:
    return PipelineConfig()


def _report(model: str) -> PipelineConfig:
    config = PipelineConfig()
    config.data = DataSection(stored_size=250, min_side=250, limit=1920)
    config.tune = TuneSection(enabled=False)
    config.train = TrainSection(
        model=model, width=1.0, loss="mse", learning_rate=1e-3, image_size=224, epochs=50, steps_per_epoch=None,
        batch_size=48, patience=5,
    )
    return config


PRESETS = {
    "quick": (_quick, ()),
    "report-model1": (lambda: _report("model1"), ("lfw",)),
    "report-model2": (lambda: _report("model2"), ("lfw", "flickr8k")),
}
"""name -> (factory, data sources it needs from --data_dir)."""


def preset(name: str) -> PipelineConfig:
    """A fresh config for preset `name`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name][0]()


# ---------------------------------------------------------------- overrides


def _at_least(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key} must be a whole number of at least {low}, got {value!r}.")


def _choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}.")


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null", "~", "")


def _type_name(typ: Any) -> str:
    if get_origin(typ) is Union:
        inner = [a for a in get_args(typ) if a is not type(None)]
        return f"{_type_name(inner[0])} or none"
    if get_origin(typ) is dict:
        return "a mapping of name: value"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(typ, str(typ))


def coerce(value: Any, typ: Any, key: str) -> Any:
    """`value` (from YAML or a `--set` string) as type `typ`, or ConfigError naming `key`."""
    origin = get_origin(typ)
    if origin is Union:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        inner = [a for a in get_args(typ) if a is not type(None)]
        return coerce(value, inner[0], key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key} must be {_type_name(typ)}, got {value!r}.")
        _, value_type = get_args(typ)
        return {str(k): coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    problem = None
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        problem = f"config key {key} has a type ({typ}) that cannot be set from text."
    raise ConfigError(problem or f"config key {key} must be {_type_name(typ)}, got {value!r}.")


def _fields(obj: Any) -> dict[str, Any]:
    hints = get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _unknown(key: str, where: str, valid: Sequence[str]) -> ConfigError:
    place = f"in {where}" if where else "at the top level"
    return ConfigError(f"unknown config key {key!r}; the valid keys {place} are {', '.join(valid)}.")


def merge(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Set the fields of dataclass `obj` from a nested mapping (a YAML document); mappings replace dict fields."""
    if not isinstance(values, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or 'top level'} must be a mapping, got {values!r}.")
    fields = _fields(obj)
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise _unknown(key, prefix.rstrip("."), list(fields))
        typ = fields[name]
        if dataclasses.is_dataclass(typ):
            merge(getattr(obj, name), value, f"{key}.")
        else:
            setattr(obj, name, coerce(value, typ, key))


def apply_override(config: PipelineConfig, assignment: str) -> None:
    """Apply one `dotted.key=value` (`--set`); a dict field takes one more part, e.g. data.sources.lfw=/data/lfw."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set takes KEY=VALUE with a dotted key such as train.epochs=20, got {assignment!r}.")
    parts = key.split(".")
    obj: Any = config
    for i, part in enumerate(parts):
        fields = _fields(obj)
        where = ".".join(parts[:i])
        if part not in fields:
            raise _unknown(".".join(parts[: i + 1]), where, list(fields))
        typ = fields[part]
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(typ):
            if last:
                first = next(iter(_fields(getattr(obj, part))))
                raise ConfigError(f"{key} is a section; set one of its keys, e.g. {key}.{first}=VALUE.")
            obj = getattr(obj, part)
            continue
        if get_origin(typ) is dict:
            if i != len(parts) - 2:
                raise ConfigError(f"{key} is a mapping; set one entry as {'.'.join(parts[: i + 1])}.NAME=VALUE.")
            _, value_type = get_args(typ)
            getattr(obj, part)[parts[-1]] = coerce(text, value_type, key)
            return
        if not last:
            raise _unknown(key, ".".join(parts[: i + 1]), [])
        setattr(obj, part, coerce(text, typ, key))
        return


def load_yaml(path: str) -> dict[str, Any]:
    """The mapping in a YAML config file (local or gs://); ConfigError for a missing or malformed file."""
    import yaml

    try:
        if "://" in path:
            import tensorflow as tf

            with tf.io.gfile.GFile(path) as f:
                text = f.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except Exception as e:  # OSError locally, tf.errors.NotFoundError and friends for gs://
        raise ConfigError(
            f"config file {path} cannot be read ({type(e).__name__}); pass an existing YAML file."
        ) from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix its syntax.") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of sections (data:, train:, ...), not a {type(values).__name__}."
        )
    return values


def parse_data_dir(value: str) -> tuple[str, str]:
    """'lfw=/data/lfw' -> ('lfw', '/data/lfw'); a bare path is named after its folder, as example_gen does."""
    from components.example_gen import IngestError, parse_data_dirs

    try:
        ((name, path),) = parse_data_dirs([value])
    except IngestError as e:
        raise ConfigError(str(e)) from None
    return name, path


def build_config(
    preset_name: str = "quick",
    *,
    config_file: str | None = None,
    overrides: Sequence[str] = (),
    data_dirs: Sequence[str] = (),
    output_dir: str | None = None,
    tune: bool | None = None,
) -> PipelineConfig:
    """The preset, then the YAML file, then the `--set` overrides, then the dedicated flags; validated."""
    config = preset(preset_name)
    if config_file:
        merge(config, load_yaml(config_file))
    for assignment in overrides:
        apply_override(config, assignment)
    for value in data_dirs:
        name, path = parse_data_dir(value)
        config.data.sources[name] = path
    if output_dir is not None:
        config.output_dir = output_dir
    if tune is not None:
        config.tune.enabled = tune
    config.output_dir = config.output_dir.rstrip("/") or config.output_dir
    needed = [name for name in PRESETS[preset_name][1] if name not in config.data.sources]
    if needed:
        flags = " and ".join(f"--data_dir {name}=PATH" for name in PRESETS[preset_name][1])
        raise ConfigError(
            f"preset {preset_name} trains on real data and needs {flags} (missing: {', '.join(needed)}); "
            "download and unpack the data sets yourself, nothing here downloads."
        )
    return config.validate()


# ---------------------------------------------------------------- command line


@dataclass(frozen=True)
class RunFlags:
    """The command-line flags that steer the run rather than configure the stages."""

    preset: str
    config_file: Optional[str]
    no_cache: bool


def add_config_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags every pipeline entry point shares (the local runner and the Kubeflow compiler)."""
    add = parser.add_argument
    add("--preset", choices=list(PRESETS), default="quick",
        help="Starting config: quick (synthetic data, minutes on a laptop; default), report-model1 (LFW, 224x224, "
        "the report's settings) or report-model2 (fusion Model 2 on LFW + flickr8k).")
    add("--config", dest="config_file", metavar="FILE",
        help="YAML file with any of the sections data, ingest, tune, train, evaluate, push (applied over the preset).")
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="Override one config key, e.g. --set train.epochs=20 --set data.limit=none; repeatable.")
    add("--data_dir", dest="data_dirs", action="append", default=[], metavar="NAME=PATH",
        help="An image folder (local or gs://) as a named source, e.g. lfw=/data/lfw; repeatable. "
        "Without it the synthetic set is generated.")
    add("--output_dir", help="Where runs/, stages/, cache/ and serving/ go (default out).")
    add("--tune", action=argparse.BooleanOptionalAction, default=None,
        help="Run the tuning stage or not (default: the preset's choice).")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Run the colorization pipeline: generate (synthetic only), ingest, validate, tune, train, "
        "evaluate, push. Stages whose inputs, config and code are unchanged come from the cache. Unknown flags "
        "(--runner, --direct_num_workers, --project, --temp_location, ...) go to Beam untouched.",
    )
    add_config_flags(parser)
    parser.add_argument("--no-cache", "--no_cache", dest="no_cache", action="store_true",
                        help="Run every stage even when a cached result exists.")
    return parser


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    return build_config(
        args.preset, config_file=args.config_file, overrides=args.overrides, data_dirs=args.data_dirs,
        output_dir=args.output_dir, tune=args.tune,
    )


def parse_args(argv: Sequence[str] | None = None) -> Tuple[PipelineConfig, list, RunFlags]:
    """(validated config, Beam args passed through, run flags); ConfigError for a config mistake."""
    args, beam_args = build_parser().parse_known_args(argv)
    config = config_from_args(args)
    return config, list(beam_args), RunFlags(args.preset, args.config_file, args.no_cache)
