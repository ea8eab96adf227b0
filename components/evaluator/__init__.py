"""evaluator: measure a trained colorizer on the test split against the gray baseline and the last blessed model.

    python -m components.evaluator --model out/train/model.keras --examples out/ingest --output_dir out/eval
    python -m components.evaluator --model out/train/model.keras --examples out/ingest --output_dir out/eval \\
        --baseline_model out/serving/colorizer/3 --historical_dir data/historical --min_psnr_gain_db 0.5 \\
        --prior out/statistics/prior.json

Streams the split once (memory flat in its size) and computes, for the model,
the gray baseline (a = b = 0) and, when given, the last blessed model (a
.keras file or a serving SavedModel version dir, through its `predict_ab`
signature; a model base path picks its highest version):

- PSNR and SSIM on uint8 sRGB, per image, then averaged;
- ab mean squared error in LAB units^2;
- Hasler-Suesstrunk colourfulness of the predictions and of the truth, and
  the DDColor paper's absolute-opponent variant, with their differences;
- colorfulness_ratio: the predictions' colourfulness over the truth's (None
  when the truth's is 0): 1 is the truth's, about 0.3 a brownish/sepia cast;
- AUC of the share of pixels whose ab error (Euclidean, LAB units) is within
  each threshold 0, 1, ..., 150, as Zhang et al. (2016) report it, 0..1, and,
  with --prior (the statistics stage's prior.json), auc_rebalanced: the same
  curve with each pixel weighted by the rebalancing weight of its true ab's
  nearest bin, so rare saturated colours count as much as common dull ones
  (Zhang et al.'s class-rebalanced AuC; None without a prior).

Blessing (TFX Evaluator semantics, thresholds from the flags): the model's
PSNR may be at most 1 dB below gray's (--min_psnr_gain_db -1: a colourful
model pays a little PSNR), its colourfulness must be closer to the truth's
than gray's (whose colourfulness is 0) and close at least half of gray's gap
(--min_colorfulness_recovered 0.5), so a gray, brownish or sepia model is not
blessed, and it must be no worse than the last blessed model beyond a
tolerance. blessing.json's "reason" says why in one sentence, also printed.
Writes under --output_dir: metrics.json, blessing.json, an
empty BLESSED or NOT_BLESSED marker, test_grid.png (the report's 50 test images
as rows of gray | predicted | truth, in columns of ten rows) and, with --historical_dir, each photo
colorized at its own resolution as historical/<stem>.png. Exit status 0 whether
or not the model is blessed; 2 for a mistake in the flags or inputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import posixpath
import sys

import numpy as np
import tensorflow as tf

from components import loader, settings
from components.evaluator.errors import EvaluationError
from components.evaluator.metrics import (  # noqa: F401  re-exported: evaluator.bless, evaluator.render, ...
    AUC_MAX_THRESHOLD,
    PSNR_CAP_DB,
    MetricAccumulator,
    Thresholds,
    bless,
    reason,
    render,
    weight_table,
)
from components.evaluator.pictures import (  # noqa: F401
    GRID_ROWS_PER_COLUMN,
    HISTORICAL_DIR,
    colorize_folder,
    colorize_photo,
    grid,
)
from components.evaluator.pictures import historical_files, write_png
from components.evaluator.predictors import Predictor, gray_ab, load_predictor  # noqa: F401
from components.evaluator.predictors import has_model
from components.settings import artifact, linked, setting
from schemas import (  # noqa: F401  the blessing files the pusher reads, re-exported: evaluator.BLESSING_FILE
    BLESSED_MARKER,
    BLESSING_FILE,
    GRID_FILE,
    IMAGE_EXTENSIONS,
    METRICS_FILE,
    NOT_BLESSED_MARKER,
    TRAIN_SUMMARY_FILE,
)
from schemas.serving import MAX_PIXELS, PREDICT_AB_SIGNATURE  # noqa: F401

MIN_IMAGE_SIZE = 11
"""SSIM's 11x11 Gaussian window needs images at least this large."""


@dataclasses.dataclass
class EvalConfig:
    """One evaluation. image_size defaults to the model's input size."""

    model: str = artifact("input", "the trainer's model.keras (or a serving SavedModel version dir)")
    examples: str = artifact("input", "example_gen output dir (or a TFRecord glob with {split})")
    output_dir: str = artifact("output", "where metrics.json, blessing.json, the marker and PNGs go")
    prior: str | None = artifact(
        "input", "the statistics stage's prior.json: weights for the class-rebalanced AuC", required=False,
        default=None)
    baseline_model: str | None = linked(
        None, None, "the last blessed model: a .keras file, a serving SavedModel version dir (predict_ab) or a model "
        "base path (its highest version); the pipeline passes its serving model base path")
    baseline_optional: bool = linked(
        None, False, "when --baseline_model holds no model yet (before the first push), measure against gray only")
    split: str = setting("test", "split to measure")
    image_size: int | None = setting(None, "evaluation crop side; none: the model's input size")
    batch_size: int = setting(16, "images per batch")
    max_images: int | None = setting(None, "measure only the first N images of the split; none: all")
    grid_images: int = setting(50, "rows of the gray | predicted | truth grid")
    historical_dir: str | None = setting(
        None, "a folder of black-and-white photos to colorize at their own resolution")
    thresholds: Thresholds = setting(default_factory=Thresholds, help="blessing thresholds (TFX Evaluator semantics)")

    def validate(self, prefix: str = "--") -> None:
        """Raise EvaluationError, naming `prefix` + the field, for values no evaluation could use."""
        try:
            settings.check_choices(self, prefix)
        except settings.SettingsError as e:
            raise EvaluationError(str(e)) from None
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise EvaluationError(
                f"{prefix}image_size must be at least {MIN_IMAGE_SIZE} (SSIM's window), got {self.image_size}."
            )
        for name in ("batch_size", "grid_images"):
            if getattr(self, name) < 1:
                raise EvaluationError(f"{prefix}{name} must be at least 1, got {getattr(self, name)}.")
        if self.max_images is not None and self.max_images < 1:
            raise EvaluationError(f"{prefix}max_images must be at least 1, got {self.max_images}.")
        section = prefix if prefix == "--" else f"{prefix}thresholds."
        for name, value in dataclasses.asdict(self.thresholds).items():
            if not math.isfinite(value):
                raise EvaluationError(f"{section}{name} must be a finite number, got {value}.")


@dataclasses.dataclass
class EvalResult:
    """What the evaluation decided and where it wrote it (metrics as in metrics.json)."""

    blessed: bool
    metrics: dict
    metrics_path: str
    blessing_path: str
    grid_path: str
    historical: list[str]
    checks: list[dict] = dataclasses.field(default_factory=list)
    """The blessing's checks, as in blessing.json: {"name", "passed", "detail"}."""
    reason: str = ""
    """Why, in one sentence for a person, as in blessing.json."""

    @property
    def failed_checks(self) -> list[str]:
        return [c["name"] for c in self.checks if not c["passed"]]



# ---------------------------------------------------------------- the run


def _image_size(config: EvalConfig, model: Predictor) -> int:
    if config.image_size is not None:
        return config.image_size
    if model.size is not None:
        return model.size
    summary = posixpath.join(posixpath.dirname(config.model), TRAIN_SUMMARY_FILE)
    if tf.io.gfile.exists(summary):
        with tf.io.gfile.GFile(summary) as f:
            return int(json.load(f)["image_size"])
    raise EvaluationError(f"{config.model} accepts any image size; pass --image_size (the training crop side).")


def _json_safe(value):
    """NaN and infinities as null, so metrics.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: str, value: dict) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(_json_safe(value), f, indent=1, sort_keys=True, allow_nan=False)
        f.write("\n")



def _weight_table(path: str) -> np.ndarray:
    """The rebalancing lookup table of the prior at `path` (components.colorbins.ColorPrior's JSON)."""
    from components.colorbins import ColorPrior

    if not tf.io.gfile.exists(path):
        raise EvaluationError(f"--prior {path} does not exist; run the statistics stage or leave --prior out.")
    try:
        prior = ColorPrior.load(path)
        return weight_table(prior.centres, prior.weights)
    except (ValueError, KeyError, TypeError, tf.errors.OpError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EvaluationError(f"--prior {path} could not be read as a colour prior ({first.rstrip('.')}).") from None


def evaluate(config: EvalConfig) -> EvalResult:
    """Stream the split once, compute the metrics of model, gray and baseline, bless, write every output.

    Raises EvaluationError with one sentence for anything the user can fix.
    """
    config.validate()
    model = load_predictor(config.model)
    size = _image_size(config, model)
    if size < MIN_IMAGE_SIZE:
        raise EvaluationError(
            f"image size {size} is under {MIN_IMAGE_SIZE} (SSIM's window); pass a larger --image_size."
        )
    baseline = None
    if config.baseline_model and config.baseline_optional and not has_model(config.baseline_model):
        print(f"evaluator: no baseline model at {config.baseline_model} yet; measuring against gray only",
              flush=True)
        config = dataclasses.replace(config, baseline_model=None)
    if config.baseline_model:
        baseline = load_predictor(config.baseline_model)
    if config.historical_dir:
        historical_files(config.historical_dir)  # fail before the long pass, not after it
    table = _weight_table(config.prior) if config.prior else None
    try:
        dataset = loader.make_dataset(
            config.examples, config.split, image_size=size, batch_size=config.batch_size, training=False
        )
    except loader.LoaderError as e:
        raise EvaluationError(str(e)) from None

    accumulators = {"model": MetricAccumulator(weight_table=table),
                    "gray": MetricAccumulator(neutral=True, weight_table=table)}
    if baseline is not None:
        accumulators["baseline"] = MetricAccumulator(weight_table=table)
    grid_rows: list[np.ndarray] = []
    seen = 0
    try:
        for l, ab in dataset:
            if config.max_images is not None:
                if seen >= config.max_images:
                    break
                l, ab = l[: config.max_images - seen], ab[: config.max_images - seen]
            seen += int(l.shape[0])
            true_ab = ab * loader.AB_SCALE
            true_rgb = render(l, true_ab)
            predicted = accumulators["model"].update(l, model(l), true_ab, true_rgb)
            gray = accumulators["gray"].update(l, gray_ab(l), true_ab, true_rgb)
            if baseline is not None:
                accumulators["baseline"].update(l, baseline(l), true_ab, true_rgb)
            keep = config.grid_images - len(grid_rows)
            if keep > 0:
                rows = np.concatenate([gray, predicted, true_rgb.numpy()], axis=2)[:keep]
                grid_rows.extend(rows)
    except tf.errors.OpError as e:
        raise EvaluationError(
            f"reading the {config.split} split of {config.examples} failed ({e.message.splitlines()[0]}); "
            "re-run example_gen."
        ) from None
    if not seen:
        raise EvaluationError(
            f"the {config.split} split of {config.examples} holds no records; re-run example_gen with a "
            f"{config.split} share in --splits or pass another --split."
        )

    metrics = {
        "split": config.split,
        "images": seen,
        "image_size": size,
        "model": accumulators["model"].result(),
        "gray": accumulators["gray"].result(),
        "baseline": accumulators["baseline"].result() if baseline is not None else None,
        "baseline_model": config.baseline_model or None,
        "model_path": config.model,
        "prior": config.prior or None,
    }
    blessed, checks = bless(metrics, config.thresholds)
    why = reason(metrics, config.thresholds, checks)

    out = config.output_dir
    tf.io.gfile.makedirs(out)
    metrics_path = posixpath.join(out, METRICS_FILE)
    blessing_path = posixpath.join(out, BLESSING_FILE)
    grid_path = posixpath.join(out, GRID_FILE)
    write_png(grid_path, grid(grid_rows))
    historical = []
    if config.historical_dir:
        historical = colorize_folder(
            model, config.historical_dir, posixpath.join(out, HISTORICAL_DIR), model.size or size
        )
    _write_json(metrics_path, metrics)
    _write_json(blessing_path, {
        "blessed": blessed,
        "reason": why,
        "checks": checks,
        "model_path": config.model,
        "metrics_path": metrics_path,
        "thresholds": dataclasses.asdict(config.thresholds),
    })
    marker, stale = (BLESSED_MARKER, NOT_BLESSED_MARKER) if blessed else (NOT_BLESSED_MARKER, BLESSED_MARKER)
    if tf.io.gfile.exists(posixpath.join(out, stale)):
        tf.io.gfile.remove(posixpath.join(out, stale))
    with tf.io.gfile.GFile(posixpath.join(out, marker), "w") as f:
        f.write("")  # GFile creates the file on the first write
    return EvalResult(blessed, _json_safe(metrics), metrics_path, blessing_path, grid_path, historical, checks, why)


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    return settings.parser(
        EvalConfig,
        prog="python -m components.evaluator",
        description="Measure a colorizer on the test split against the gray baseline and the last blessed model, "
        "and decide whether to bless it (exit 0 either way).",
    )


def _summary_line(name: str, m: dict) -> str:
    def number(key: str, spec: str) -> str:
        return "n/a" if m.get(key) is None else format(m[key], spec)

    return (f"  {name:<9} PSNR {number('psnr', '7.3f')} dB  SSIM {number('ssim', '.4f')}  "
            f"ab MSE {number('ab_mse', '9.2f')}  colorfulness {number('colorfulness', '6.2f')} "
            f"(truth {number('colorfulness_truth', '6.2f')}, ratio {number('colorfulness_ratio', '.3f')})  "
            f"AUC {number('auc', '.4f')} (rebalanced {number('auc_rebalanced', '.4f')})")



def main(argv: list[str] | None = None) -> int:
    """Parse flags and evaluate; one sentence and exit 2 for a mistake in the flags or inputs."""
    config = settings.from_args(EvalConfig, _parser().parse_args(argv))
    try:
        result = evaluate(config)
    except EvaluationError as e:
        print(f"evaluator: {e}", file=sys.stderr)
        return 2
    m = result.metrics
    print(f"evaluator: {m['images']} {m['split']} images at {m['image_size']}x{m['image_size']}")
    for name in ("model", "gray", "baseline"):
        if m[name] is not None:
            print(_summary_line(name, m[name]))
    written = [result.metrics_path, result.blessing_path, result.grid_path]
    if result.historical:
        written.append(f"{len(result.historical)} photos in {posixpath.dirname(result.historical[0])}")
    print(f"evaluator: wrote {', '.join(written)}")
    verdict = "BLESSED" if result.blessed else f"NOT BLESSED (failed: {', '.join(result.failed_checks)})"
    print(f"evaluator: model is {verdict}")
    print(f"evaluator: {result.reason}", flush=True)
    return 0

