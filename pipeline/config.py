"""The pipeline's one typed config: nested dataclasses, presets, YAML and `--set key=value` overrides.

The train, tune, evaluate and push sections are the components' own config
dataclasses (components.settings): their defaults are the components'
defaults, declared once, and a preset only overrides. A key the pipeline
wires (an artifact path, or a value linked to another key such as
tune.image_size, which follows train.image_size) is not settable.

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
- `report-model1`: the report's Model 1 on LFW, otherwise the components'
  defaults: stored 250x250 (LFW's own size, images under 250 dropped),
  random 224x224 crops, 1,920 images
  (`--limit 1920`, a stable sample, as the report's subset), MSE, Adam 1e-3,
  batch 48, up to 50 epochs with EarlyStopping (patience 5: the report does
  not give its value), no tuning. The
  report split its 1,920 images 80/20 train/validation and colored 50 other
  images; here the same 1,920 are split 80/10/10 train/eval/test and the
  test split is what the evaluator measures.
- `colorful`: the classification head (components.colorbins) on your own
  photos (`--data_dir`): Model 2 with U-Net fusion of MobileNetV2, prior
  lambda 0.6, T 0.15, 64x64 crops, 30 minutes of training on 2 CPU cores, no
  tuning; see README's colour section for what it reaches on flickr8k and LFW.
- `report-model2`: the same with the fusion Model 2 (frozen
  InceptionResNetV2, ImageNet weights from the Keras cache, fetched when
  missing) on LFW plus
  flickr8k, 1,920 images from each.
"""

from __future__ import annotations

import argparse
import dataclasses
import posixpath
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple, get_args, get_origin

from components import settings
from components.evaluator import EvalConfig, EvaluationError
from components.example_gen import IngestConfig
from components.pusher import PushConfig, PushError
from components.statistics import StatisticsConfig, StatisticsError
from components.trainer import TrainConfig, TrainError
from components.tuner import TuneConfig, TunerError

# The sections of train, tune, evaluate and push ARE the components' own config dataclasses: a setting added to
# one is a config key, a --set, a YAML key, a CLI flag and part of the stage's fingerprint at once.
# Annotations use Optional/Dict so typing.get_type_hints can evaluate them on Python 3.9 too.

VALIDATION_MODES = ("all", "sample", "none")
SSIM_MIN_SIZE = 16
"""Smallest training crop the evaluator can measure (SSIM's 11x11 window), as a multiple of 8."""
_INGEST = IngestConfig(sources=(), output_dir="")
"""example_gen's defaults, the data section's defaults."""


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
    stored_size: int = _INGEST.stored_size
    min_side: int = _INGEST.min_side
    limit: Optional[int] = None
    """At most this many images per source (a stable sample); the report used 1920."""
    min_colorfulness: float = _INGEST.min_colorfulness

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
class TuneSection(TuneConfig):
    """components.tuner's own settings, plus whether the pipeline runs the stage. The tuner trains at the trainer's
    crop size, backbone and seed, and train.model and whichever of train.width/loss/learning_rate/batch_size are
    set are pinned (its linked fields); the rest of components.hparams.SEARCH_SPACE is searched."""

    enabled: bool = settings.setting(True, "run the tuning stage; without it the trainer uses train.* and the "
                                     "report's defaults")


_COMPONENT_ERRORS = (StatisticsError, TrainError, TunerError, EvaluationError, PushError, settings.SettingsError)


@dataclass
class PipelineConfig:
    """Everything one pipeline run needs; `validate()` once after the overrides."""

    output_dir: str = "out"
    data: DataSection = field(default_factory=DataSection)
    ingest: IngestSection = field(default_factory=IngestSection)
    statistics: StatisticsConfig = field(default_factory=StatisticsConfig)
    tune: TuneSection = field(default_factory=TuneSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    push: PushConfig = field(default_factory=PushConfig)

    @property
    def serving_dir(self) -> str:
        return self.push.serving_dir or posixpath.join(self.output_dir, "serving")

    def validate(self) -> "PipelineConfig":
        """Check every section and the rules between them; returns self."""
        if not self.output_dir:
            raise ConfigError("output_dir is empty; pass --output_dir DIR.")
        for section in (self.data, self.ingest):
            section.validate()
        try:
            self.statistics.validate(prefix="statistics.")
            self.tune.validate(prefix="tune.")
            self.train.validate(prefix="train.")
            self.evaluate.validate(prefix="evaluate.")
            self.push.validate_config(prefix="push.")
        except _COMPONENT_ERRORS as e:
            raise ConfigError(str(e)) from None
        if self.train.image_size < SSIM_MIN_SIZE:
            raise ConfigError(
                f"train.image_size must be a multiple of 8 and at least {SSIM_MIN_SIZE} (the models downsample by 8, "
                f"the evaluator's SSIM needs 11 pixels), got {self.train.image_size}."
            )
        if self.train.image_size > self.data.stored_size:
            raise ConfigError(
                f"train.image_size {self.train.image_size} is larger than data.stored_size {self.data.stored_size}, "
                "the side of the stored crops; lower the one or raise the other."
            )
        if self.ingest.split_weights().get(self.statistics.split, 0) <= 0:
            raise ConfigError(
                f"statistics.split {self.statistics.split!r} gets no share in ingest.splits {self.ingest.splits!r}; "
                "the colour prior comes from the training split, train."
            )
        if self.ingest.split_weights().get(self.evaluate.split, 0) <= 0:
            raise ConfigError(
                f"evaluate.split {self.evaluate.split!r} gets no share in ingest.splits {self.ingest.splits!r}; "
                "add it there or pick another split."
            )
        return self


# ---------------------------------------------------------------- presets


def _quick() -> PipelineConfig:
    """Minutes on 2 CPU cores: small synthetic scenes, Model 1 at half width on 64x64 crops, a short search."""
    config = PipelineConfig()
    config.data.stored_size, config.data.min_side = 80, 64
    config.tune.max_trials, config.tune.epochs, config.tune.steps_per_epoch = 2, 1, 10
    t = config.train
    t.model, t.width, t.image_size, t.epochs, t.steps_per_epoch, t.seed = "model1", 0.5, 64, 12, 20, 0
    return config


def _report(model: str) -> PipelineConfig:
    """The report's settings: 1,920 images, MSE, Adam 1e-3, batch 48, up to 50 epochs, no tuning."""
    config = PipelineConfig()
    config.data.limit = 1920
    config.tune.enabled = False
    t = config.train
    t.model, t.width, t.loss, t.learning_rate, t.batch_size, t.seed = model, 1.0, "mse", 1e-3, 48, 0
    return config


def _colorful() -> PipelineConfig:
    """Colourful, plausible colour on your photos in about half an hour on 2 CPU cores: Model 2 with MobileNetV2's
    feature maps feeding the decoder at every scale (U-Net fusion; the ImageNet weights come through Keras) and the
    class-rebalanced classification head (prior lambda 0.6, annealed mean at T = 0.15) on 64x64 crops, a 30-minute
    training budget with the learning rate decaying to zero over it, the last epoch kept, no tuning: on flickr8k
    86% of the truth's colourfulness at 0.96 dB below gray's PSNR."""
    config = PipelineConfig()
    config.data.stored_size, config.data.min_side = 80, 64
    config.statistics.rebalance_lambda = 0.6
    config.tune.enabled = False
    t = config.train
    t.model, t.backbone, t.fusion, t.head, t.width, t.image_size, t.batch_size, t.learning_rate = (
        "model2", "mobilenet_v2", "unet", "classification", 1.0, 64, 16, 1e-3)
    t.temperature = 0.15
    t.epochs, t.steps_per_epoch, t.validation_steps, t.max_minutes, t.patience, t.seed = 10_000, 50, 16, 30.0, 10_000, 0
    t.lr_decay, t.keep = "budget", "last"
    return config


PRESETS = {
    "quick": (_quick, ()),
    "report-model1": (lambda: _report("model1"), ("lfw",)),
    "report-model2": (lambda: _report("model2"), ("lfw", "flickr8k")),
    "colorful": (_colorful, ()),
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


def coerce(value: Any, typ: Any, key: str) -> Any:
    """`value` (from YAML or a `--set` string) as type `typ`, or ConfigError naming `key`."""
    try:
        return settings.coerce(value, typ, key)
    except settings.SettingsError as e:
        raise ConfigError(str(e)) from None


def _fields(obj: Any) -> dict[str, Any]:
    """The keys a user may set in this section: every field of a pipeline section, the settings of a component's.

    Asking for a component field the pipeline fills (an artifact path, or a value linked to another key) is a
    ConfigError that says where that value comes from.
    """
    from typing import get_type_hints

    hints = get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj) if settings.role(f) == "setting"}


def _not_a_setting(obj: Any, name: str, key: str) -> Optional[ConfigError]:
    """The sentence for a component field that exists but is the pipeline's to fill, else None."""
    for f in dataclasses.fields(obj):
        if f.name != name or settings.role(f) == "setting":
            continue
        source = settings.link(f)
        if source and source != "pipeline":
            return ConfigError(f"{key} follows {source}; set {source} instead.")
        return ConfigError(f"{key} is wired by the pipeline (an upstream stage's output or this stage's own dir), "
                           "not a setting; remove it from the config.")
    return None


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
            raise _not_a_setting(obj, name, key) or _unknown(key, prefix.rstrip("."), list(fields))
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
            raise (_not_a_setting(obj, part, ".".join(parts[: i + 1]))
                   or _unknown(".".join(parts[: i + 1]), where, list(fields)))
        typ = fields[part]
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(typ):
            if last:
                first = next(iter(_fields(getattr(obj, part))))
                raise ConfigError(f"{key} is a section; set one of its keys, e.g. {key}.{first}=VALUE.")
            obj = getattr(obj, part)
            continue
        if get_origin(typ) is dict or typ is dict:
            if i != len(parts) - 2:
                raise ConfigError(f"{key} is a mapping; set one entry as {'.'.join(parts[: i + 1])}.NAME=VALUE.")
            args = get_args(typ)
            getattr(obj, part)[parts[-1]] = coerce(text, args[1] if len(args) == 2 else Any, key)
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
    overrides: Tuple[str, ...] = ()
    """The --set KEY=VALUE assignments, in order."""
    data_dirs: Tuple[str, ...] = ()


def add_config_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags every pipeline entry point shares (the local runner and the Kubeflow compiler)."""
    add = parser.add_argument
    add("--preset", choices=list(PRESETS), default="quick",
        help="Starting config: quick (synthetic data, minutes on a laptop; default), report-model1 (LFW, 224x224, "
        "the report's settings), report-model2 (fusion Model 2 on LFW + flickr8k) or colorful (the classification "
        "head on your --data_dir photos, 30 minutes of training).")
    add("--config", dest="config_file", metavar="FILE",
        help="YAML file with any of the sections data, ingest, statistics, tune, train, evaluate, push (applied over "
        "the preset).")
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
    return config, list(beam_args), RunFlags(args.preset, args.config_file, args.no_cache, tuple(args.overrides),
                                             tuple(args.data_dirs))


def settings_values(config: PipelineConfig) -> dict[str, Any]:
    """Every setting of `config` as a nested JSON-able mapping (no artifact paths), which `merge` reads back:
    what a Kubeflow step receives as --config_json."""

    def values(obj: Any) -> dict[str, Any]:
        return {name: values(getattr(obj, name)) if dataclasses.is_dataclass(typ) else getattr(obj, name)
                for name, typ in _fields(obj).items()}

    return {"output_dir": config.output_dir, **{name: values(getattr(config, name))
                                               for name, typ in _fields(config).items() if name != "output_dir"}}


def from_settings(values: dict[str, Any]) -> PipelineConfig:
    """A validated config from settings_values' mapping (missing keys keep the component defaults)."""
    config = PipelineConfig()
    merge(config, values)
    return config.validate()
