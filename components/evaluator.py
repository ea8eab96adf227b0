"""evaluator: measure a trained colorizer on the test split against the gray baseline and the last blessed model.

    python -m components.evaluator --model out/train/model.keras --examples out/ingest --output_dir out/eval
    python -m components.evaluator --model out/train/model.keras --examples out/ingest --output_dir out/eval \\
        --baseline_model out/serving/colorizer/3 --historical_dir data/historical --min_psnr_gain_db 0.5

Streams the split once (memory flat in its size) and computes, for the model,
the gray baseline (a = b = 0) and, when given, the last blessed model (a
.keras file or a serving SavedModel version dir, through its `predict_ab`
signature; a model base path picks its highest version):

- PSNR and SSIM on uint8 sRGB, per image, then averaged;
- ab mean squared error in LAB units^2;
- Hasler-Suesstrunk colourfulness of the predictions and of the truth, and
  the DDColor paper's absolute-opponent variant, with their differences;
- AUC of the share of pixels whose ab error (Euclidean, LAB units) is within
  each threshold 0, 1, ..., 150, as Zhang et al. (2016) report it, 0..1.

Blessing (TFX Evaluator semantics, thresholds from the flags): the model must
beat gray on PSNR and on the colourfulness gap (|pred - truth| smaller than
gray's, whose colourfulness is 0), and be no worse than the last blessed model
beyond a tolerance. Writes under --output_dir: metrics.json, blessing.json, an
empty BLESSED or NOT_BLESSED marker, test_grid.png (the report's 50 test images
as rows of gray | predicted | truth, in columns of ten rows) and, with --historical_dir, each photo
colorized at its own resolution as historical/<stem>.png. Exit status 0 whether
or not the model is blessed; 2 for a mistake in the flags or inputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import posixpath
import sys
from typing import Callable

import numpy as np
import tensorflow as tf

from components import color, loader

METRICS_FILE = "metrics.json"
BLESSING_FILE = "blessing.json"
BLESSED_MARKER = "BLESSED"
NOT_BLESSED_MARKER = "NOT_BLESSED"
GRID_FILE = "test_grid.png"
GRID_ROWS_PER_COLUMN = 10
HISTORICAL_DIR = "historical"
PREDICT_AB_SIGNATURE = "predict_ab"
AUC_MAX_THRESHOLD = 150
"""ab-error thresholds 0, 1, ..., 150 LAB units, Zhang et al. (2016)'s sweep."""
PSNR_CAP_DB = 100.0
"""PSNR of an image identical to its truth (infinite by definition), so means and JSON stay finite."""
MAX_PIXELS = 50_000_000
"""Historical photos over this many pixels are skipped, as the serving graph refuses them."""
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MIN_IMAGE_SIZE = 11
"""SSIM's 11x11 Gaussian window needs images at least this large."""

_log = logging.getLogger("components.evaluator")  # also when run as __main__


class EvaluationError(Exception):
    """An evaluation the user set up wrongly; the message is one sentence naming the thing and the fix."""


@dataclasses.dataclass
class Thresholds:
    """Blessing thresholds; PSNR in dB, colourfulness in Hasler-Suesstrunk units."""

    min_psnr_gain_db: float = 0.0
    """model PSNR - gray PSNR must exceed this."""
    min_colorfulness_gain: float = 0.0
    """|gray diff| - |model diff| must exceed this."""
    max_psnr_drop_db: float = 0.1
    """Against the last blessed model: model PSNR >= baseline PSNR - this."""
    max_colorfulness_drop: float = 1.0
    """Against the last blessed model: |model diff| <= |baseline diff| + this."""


@dataclasses.dataclass
class EvalConfig:
    """One evaluation. image_size defaults to the model's input size."""

    model: str
    examples: str
    output_dir: str
    baseline_model: str | None = None
    baseline_optional: bool = False
    """When baseline_model holds no model yet (nothing blessed so far), measure against gray only."""
    split: str = "test"
    image_size: int | None = None
    batch_size: int = 16
    max_images: int | None = None
    grid_images: int = 50
    historical_dir: str | None = None
    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)

    def validate(self) -> None:
        """Raise EvaluationError for values no evaluation could use."""
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise EvaluationError(
                f"image_size must be at least {MIN_IMAGE_SIZE} (SSIM's window), got {self.image_size}."
            )
        if self.batch_size < 1 or self.grid_images < 1:
            raise EvaluationError(
                f"batch_size and grid_images must be at least 1, got {self.batch_size} and {self.grid_images}."
            )
        if self.max_images is not None and self.max_images < 1:
            raise EvaluationError(f"max_images must be at least 1, got {self.max_images}.")
        for name, value in dataclasses.asdict(self.thresholds).items():
            if not math.isfinite(value):
                raise EvaluationError(f"threshold {name} must be a finite number, got {value}.")


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

    @property
    def failed_checks(self) -> list[str]:
        return [c["name"] for c in self.checks if not c["passed"]]


# ---------------------------------------------------------------- predictors


@dataclasses.dataclass
class Predictor:
    """A colorizer as one callable: L (0..100) [B, S, S, 1] -> ab in LAB units [B, S, S, 2].

    `size` is the side the model was built for (None: any); inputs of
    another side are resized to it and the ab resized back.
    """

    path: str
    size: int | None
    predict: Callable[[tf.Tensor], tf.Tensor]
    keep_alive: object = None  # a loaded SavedModel's signatures die with the object they came from

    def __call__(self, l) -> tf.Tensor:
        l = tf.convert_to_tensor(l, tf.float32)
        height, width = int(l.shape[1]), int(l.shape[2])
        if self.size is None or (height, width) == (self.size, self.size):
            return self.predict(l)
        small = tf.image.resize(l, [self.size, self.size], method="bilinear", antialias=True)
        return tf.image.resize(self.predict(small), [height, width], method="bilinear")


def _square_side(shape, path: str, what: str, channels: int) -> int | None:
    """The side of an image batch shape [B, S, S, channels]; raises EvaluationError for any other shape."""
    dims = [None if d is None else int(d) for d in shape]
    if len(dims) != 4 or dims[3] != channels or dims[1] != dims[2]:
        raise EvaluationError(
            f"{path} has {what} shape {tuple(dims)}, not [batch, S, S, {channels}]; "
            "pass a colorization model from components.trainer or components.export."
        )
    return dims[1]


def _load_keras(path: str) -> Predictor:
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as e:  # Keras raises ValueError, OSError, KeyError, zipfile errors... for a bad file
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise EvaluationError(
            f"{path} could not be loaded as a Keras model ({reason}); pass the trainer's model.keras."
        ) from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise EvaluationError(
            f"{path} takes {len(model.inputs)} inputs and gives {len(model.outputs)} outputs, not L -> ab; "
            "pass an end-to-end model (the trainer's model.keras)."
        )
    size = _square_side(model.inputs[0].shape, path, "input", 1)
    _square_side(model.outputs[0].shape, path, "output", 2)
    predict = tf.function(
        lambda l: tf.cast(model(l, training=False), tf.float32) * loader.AB_SCALE, reduce_retracing=True
    )
    return Predictor(path, size, predict, keep_alive=model)


def _find_saved_model(path: str) -> str | None:
    """`path` itself if it is a SavedModel dir, else the highest integer version under it; None when neither."""
    if tf.io.gfile.exists(posixpath.join(path, "saved_model.pb")):
        return path
    versions = sorted(
        (int(name.rstrip("/")) for name in tf.io.gfile.listdir(path) if name.rstrip("/").isdigit()), reverse=True
    )
    for version in versions:
        candidate = posixpath.join(path, str(version))
        if tf.io.gfile.exists(posixpath.join(candidate, "saved_model.pb")):
            return candidate
    return None


def _has_model(path: str) -> bool:
    """Whether `path` holds something to load: a file, a SavedModel dir, or a model base path with a version."""
    if not tf.io.gfile.exists(path):
        return False
    return not tf.io.gfile.isdir(path) or _find_saved_model(path) is not None


def _saved_model_dir(path: str) -> str:
    """A SavedModel version dir: `path` itself, or the highest integer version under a model base path."""
    found = _find_saved_model(path)
    if found is not None:
        return found
    raise EvaluationError(
        f"{path} is neither a SavedModel dir (no saved_model.pb) nor a model base path with version dirs; "
        "pass a .keras file or a serving version dir such as serving/colorizer/1."
    )


def _load_saved_model(path: str) -> Predictor:
    version_dir = _saved_model_dir(path)
    try:
        loaded = tf.saved_model.load(version_dir)
    except Exception as e:  # a broken SavedModel surfaces as OSError, ValueError or an OpError
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise EvaluationError(f"{version_dir} could not be loaded as a SavedModel ({reason}); re-export it.") from None
    signature = loaded.signatures.get(PREDICT_AB_SIGNATURE)
    if signature is None:
        raise EvaluationError(
            f"{version_dir} has no {PREDICT_AB_SIGNATURE!r} signature (it has {sorted(loaded.signatures)}); "
            "pass a model exported by components.export or a .keras file."
        )
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise EvaluationError(
            f"{version_dir}'s {PREDICT_AB_SIGNATURE} signature maps {sorted(inputs)} to {sorted(outputs)}, "
            "not one L input to one ab output; re-export it with components.export."
        )
    (input_name, spec), = inputs.items()
    (output_name, output_spec), = outputs.items()
    size = _square_side(spec.shape, version_dir, f"{PREDICT_AB_SIGNATURE} input", 1)
    _square_side(output_spec.shape, version_dir, f"{PREDICT_AB_SIGNATURE} output", 2)

    def predict(l):
        return signature(**{input_name: l})[output_name]

    return Predictor(version_dir, size, predict, keep_alive=loaded)


def load_predictor(path: str) -> Predictor:
    """A .keras file or a SavedModel (version dir or model base path) as a Predictor; raises EvaluationError."""
    if not tf.io.gfile.exists(path):
        raise EvaluationError(f"model {path} does not exist; pass the trainer's model.keras or a serving version dir.")
    if tf.io.gfile.isdir(path):
        return _load_saved_model(path)
    return _load_keras(path)


def _gray(l) -> tf.Tensor:
    return tf.zeros(tf.concat([tf.shape(l)[:-1], [2]], 0), tf.float32)


# ---------------------------------------------------------------- metrics


def _images(channels: int, dtype: tf.DType = tf.float32) -> tf.TensorSpec:
    return tf.TensorSpec([None, None, None, channels], dtype)


@tf.function(input_signature=[_images(1), _images(2), tf.TensorSpec([], tf.bool)])
def _render(l, ab, neutral):
    rgb = color.lab_to_rgb(tf.concat([l, ab], -1))
    rgb = tf.cond(neutral, lambda: tf.repeat(tf.reduce_mean(rgb, -1, keepdims=True), 3, axis=-1), lambda: rgb)
    return tf.cast(tf.round(rgb * 255.0), tf.uint8)


def render(l, ab, neutral: bool = False) -> tf.Tensor:
    """L (0..100) and ab (LAB units), [B, H, W, C] or [H, W, C] -> uint8 sRGB with 3 channels.

    neutral=True renders a gray image with R = G = B exactly (lab_to_rgb's
    matrices leave channels up to 1/255 apart for a = b = 0).
    """
    l, ab = tf.convert_to_tensor(l, tf.float32), tf.convert_to_tensor(ab, tf.float32)
    if l.shape.rank == 3:
        return _render(l[None], ab[None], tf.constant(neutral))[0]
    return _render(l, ab, tf.constant(neutral))


@tf.function(input_signature=[_images(3, tf.uint8), _images(3, tf.uint8), _images(2), _images(2)])
def _batch_stats(predicted_rgb, true_rgb, predicted_ab, true_ab):
    """Per-image PSNR and SSIM, the summed squared ab error, and ab-error counts per ceil(distance)."""
    psnr = tf.image.psnr(predicted_rgb, true_rgb, max_val=255)
    ssim = tf.image.ssim(predicted_rgb, true_rgb, max_val=255)
    error = predicted_ab - true_ab
    squared = tf.reduce_sum(tf.cast(tf.square(error), tf.float64))
    distance = tf.sqrt(tf.reduce_sum(tf.square(error), -1))
    bins = tf.cast(tf.minimum(tf.math.ceil(distance), AUC_MAX_THRESHOLD + 1), tf.int32)
    counts = tf.math.bincount(
        tf.reshape(bins, [-1]), minlength=AUC_MAX_THRESHOLD + 2, maxlength=AUC_MAX_THRESHOLD + 2, dtype=tf.int64
    )
    return psnr, ssim, squared, counts


class MetricAccumulator:
    """Running sums of one colorizer's metrics over batches; memory independent of the number of images."""

    def __init__(self, neutral: bool = False):
        self.neutral = neutral
        self.images = 0
        self._sums = dict.fromkeys(
            ("psnr", "ssim", "colorfulness", "colorfulness_truth", "colorfulness_abs", "colorfulness_abs_truth"), 0.0
        )
        self._squared = 0.0
        self._values = 0
        self._counts = np.zeros(AUC_MAX_THRESHOLD + 2, np.int64)

    def update(self, l, predicted_ab, true_ab, true_rgb=None) -> np.ndarray:
        """Add one batch (ab in LAB units); returns the predictions as uint8 sRGB [B, S, S, 3]."""
        if true_rgb is None:
            true_rgb = render(l, true_ab)
        predicted_rgb = render(l, predicted_ab, self.neutral)
        psnr, ssim, squared, counts = _batch_stats(
            predicted_rgb, true_rgb, tf.cast(predicted_ab, tf.float32), tf.cast(true_ab, tf.float32)
        )
        psnr = np.minimum(psnr.numpy().astype(np.float64), PSNR_CAP_DB)  # inf for identical images; NaN stays NaN
        predicted_rgb, true_rgb = predicted_rgb.numpy(), np.asarray(true_rgb)
        self._sums["psnr"] += float(psnr.sum())
        self._sums["ssim"] += float(ssim.numpy().astype(np.float64).sum())
        for predicted, truth in zip(predicted_rgb, true_rgb):
            self._sums["colorfulness"] += color.colorfulness(predicted)
            self._sums["colorfulness_truth"] += color.colorfulness(truth)
            self._sums["colorfulness_abs"] += color.colorfulness_abs(predicted)
            self._sums["colorfulness_abs_truth"] += color.colorfulness_abs(truth)
        self._squared += float(squared.numpy())
        self._values += int(np.prod(np.shape(true_ab)))
        self._counts += counts.numpy()
        self.images += len(predicted_rgb)
        return predicted_rgb

    def auc_curve(self) -> np.ndarray:
        """Share of pixels whose ab error is <= t, for t = 0, 1, ..., AUC_MAX_THRESHOLD."""
        total = self._counts.sum()
        return np.cumsum(self._counts)[: AUC_MAX_THRESHOLD + 1] / max(total, 1)

    def result(self) -> dict[str, float]:
        """The METRICS dict of metrics.json."""
        if not self.images:
            raise ValueError("no images were added")
        mean = {name: value / self.images for name, value in self._sums.items()}
        return {
            "psnr": mean["psnr"],
            "ssim": mean["ssim"],
            "ab_mse": self._squared / self._values,
            "colorfulness": mean["colorfulness"],
            "colorfulness_truth": mean["colorfulness_truth"],
            "colorfulness_diff": mean["colorfulness"] - mean["colorfulness_truth"],
            "colorfulness_abs": mean["colorfulness_abs"],
            "colorfulness_abs_truth": mean["colorfulness_abs_truth"],
            "colorfulness_abs_diff": mean["colorfulness_abs"] - mean["colorfulness_abs_truth"],
            "auc": float(self.auc_curve().mean()),
        }


# ---------------------------------------------------------------- blessing


def bless(metrics: dict, thresholds: Thresholds) -> tuple[bool, list[dict]]:
    """TFX-style blessing from a metrics.json dict: (blessed, checks as {"name", "passed", "detail"})."""
    model, gray, baseline = metrics["model"], metrics["gray"], metrics.get("baseline")
    t = thresholds
    checks = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append({"name": name, "passed": bool(passed), "detail": detail})

    gain = model["psnr"] - gray["psnr"]
    check("psnr_vs_gray", gain > t.min_psnr_gain_db,
          f"PSNR {model['psnr']:.3f} dB vs gray {gray['psnr']:.3f} dB: gain {gain:+.3f} dB, "
          f"must exceed {t.min_psnr_gain_db:g} dB")
    model_gap, gray_gap = abs(model["colorfulness_diff"]), abs(gray["colorfulness_diff"])
    check("colorfulness_vs_gray", gray_gap - model_gap > t.min_colorfulness_gain,
          f"|colorfulness pred - truth| {model_gap:.3f} vs gray's {gray_gap:.3f}: gain {gray_gap - model_gap:+.3f}, "
          f"must exceed {t.min_colorfulness_gain:g}")
    if baseline is not None:
        check("psnr_vs_baseline", model["psnr"] >= baseline["psnr"] - t.max_psnr_drop_db,
              f"PSNR {model['psnr']:.3f} dB vs last blessed {baseline['psnr']:.3f} dB: "
              f"change {model['psnr'] - baseline['psnr']:+.3f} dB, may drop at most {t.max_psnr_drop_db:g} dB")
        baseline_gap = abs(baseline["colorfulness_diff"])
        check("colorfulness_vs_baseline", model_gap <= baseline_gap + t.max_colorfulness_drop,
              f"|colorfulness pred - truth| {model_gap:.3f} vs last blessed {baseline_gap:.3f}: "
              f"may grow by at most {t.max_colorfulness_drop:g}")
    return all(c["passed"] for c in checks), checks


# ---------------------------------------------------------------- pictures


def colorize_photo(predictor: Predictor, rgb: np.ndarray, size: int) -> np.ndarray:
    """Colorize one photo at its own resolution, as the serving graph does: uint8 RGB [H, W, 3] in and out.

    The model sees L resized to size x size; its ab is upsampled to H x W
    and joined with the photo's full-resolution L.
    """
    lab = color.rgb_to_lab(tf.convert_to_tensor(rgb, tf.float32) / 255.0)
    l = lab[..., :1]
    height, width = int(l.shape[0]), int(l.shape[1])
    small = tf.image.resize(l[None], [size, size], method="bilinear", antialias=True)
    ab = tf.image.resize(predictor(small), [height, width], method="bilinear")[0]
    return render(l, ab).numpy()


def _write_png(path: str, rgb: np.ndarray) -> None:
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(tf.io.encode_png(rgb).numpy())


def _historical_files(folder: str) -> list[str]:
    if not tf.io.gfile.isdir(folder):
        raise EvaluationError(f"historical dir {folder} does not exist; pass a folder of black-and-white photos.")
    names = sorted(n for n in tf.io.gfile.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise EvaluationError(
            f"historical dir {folder} holds no {', '.join(IMAGE_EXTENSIONS)} files; "
            "add photos or drop --historical_dir."
        )
    return [posixpath.join(folder, n) for n in names]


def colorize_folder(predictor: Predictor, folder: str, out_dir: str, size: int) -> list[str]:
    """Colorize every photo in `folder` into out_dir/<stem>.png; unreadable files are skipped with a warning."""
    from components.decode import RejectedImage, load_rgb

    files = _historical_files(folder)
    tf.io.gfile.makedirs(out_dir)
    written, stems = [], set()
    for path in files:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
        try:
            image = load_rgb(data, min_side=1, max_pixels=MAX_PIXELS)
        except RejectedImage as e:
            _log.warning("skipped historical photo %s: %s", path, e.detail)
            continue
        name = posixpath.basename(path)
        stem = name.rsplit(".", 1)[0]
        if stem in stems:  # photo.jpg and photo.png: keep both
            stem = name.replace(".", "_")
        stems.add(stem)
        out = posixpath.join(out_dir, f"{stem}.png")
        _write_png(out, colorize_photo(predictor, np.asarray(image), size))
        written.append(out)
    return written


# ---------------------------------------------------------------- the run


def _image_size(config: EvalConfig, model: Predictor) -> int:
    if config.image_size is not None:
        return config.image_size
    if model.size is not None:
        return model.size
    summary = posixpath.join(posixpath.dirname(config.model), "train_summary.json")
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


def grid(rows: list[np.ndarray], rows_per_column: int = GRID_ROWS_PER_COLUMN) -> np.ndarray:
    """gray | predicted | truth rows laid out top to bottom in columns of `rows_per_column`, left to right.

    50 images at 224 make a 5 x 10 grid of 3360 x 2240 pixels instead of one strip 11,200 pixels tall;
    cells past the last image stay white.
    """
    columns = -(-len(rows) // rows_per_column)
    height = min(len(rows), rows_per_column)
    row_h, row_w = rows[0].shape[:2]
    canvas = np.full((height * row_h, columns * row_w, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        column, r = divmod(i, rows_per_column)
        canvas[r * row_h:(r + 1) * row_h, column * row_w:(column + 1) * row_w] = row
    return canvas


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
    if config.baseline_model and config.baseline_optional and not _has_model(config.baseline_model):
        print(f"evaluator: no baseline model at {config.baseline_model} yet; measuring against gray only",
              flush=True)
        config = dataclasses.replace(config, baseline_model=None)
    if config.baseline_model:
        baseline = load_predictor(config.baseline_model)
    if config.historical_dir:
        _historical_files(config.historical_dir)  # fail before the long pass, not after it
    try:
        dataset = loader.make_dataset(
            config.examples, config.split, image_size=size, batch_size=config.batch_size, training=False
        )
    except loader.LoaderError as e:
        raise EvaluationError(str(e)) from None

    accumulators = {"model": MetricAccumulator(), "gray": MetricAccumulator(neutral=True)}
    if baseline is not None:
        accumulators["baseline"] = MetricAccumulator()
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
            gray = accumulators["gray"].update(l, _gray(l), true_ab, true_rgb)
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
    }
    blessed, checks = bless(metrics, config.thresholds)

    out = config.output_dir
    tf.io.gfile.makedirs(out)
    metrics_path = posixpath.join(out, METRICS_FILE)
    blessing_path = posixpath.join(out, BLESSING_FILE)
    grid_path = posixpath.join(out, GRID_FILE)
    _write_png(grid_path, grid(grid_rows))
    historical = []
    if config.historical_dir:
        historical = colorize_folder(
            model, config.historical_dir, posixpath.join(out, HISTORICAL_DIR), model.size or size
        )
    _write_json(metrics_path, metrics)
    _write_json(blessing_path, {
        "blessed": blessed,
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
    return EvalResult(blessed, _json_safe(metrics), metrics_path, blessing_path, grid_path, historical, checks)


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    defaults = Thresholds()
    p = argparse.ArgumentParser(
        prog="python -m components.evaluator",
        description="Measure a colorizer on the test split against the gray baseline and the last blessed model, "
        "and decide whether to bless it (exit 0 either way).",
    )
    p.add_argument("--model", required=True, help="the trainer's model.keras (or a serving SavedModel version dir)")
    p.add_argument("--examples", required=True, help="example_gen output dir (or a TFRecord glob with {split})")
    p.add_argument("--output_dir", required=True, help="where metrics.json, blessing.json, the marker and PNGs go")
    p.add_argument("--baseline_model",
                   help="the last blessed model: a .keras file or a serving SavedModel version dir (predict_ab)")
    p.add_argument("--baseline_optional", action="store_true",
                   help="when --baseline_model holds no model yet (before the first push), measure against gray only")
    p.add_argument("--historical_dir", help="a folder of black-and-white photos to colorize at their own resolution")
    p.add_argument("--split", default="test", help="split to measure (default test)")
    p.add_argument("--image_size", type=int, help="evaluation crop side (default: the model's input size)")
    p.add_argument("--max_images", type=int, help="measure only the first N images of the split")
    p.add_argument("--batch_size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--grid_images", type=int, default=50, help="rows of the gray | predicted | truth grid (default 50)")
    p.add_argument("--min_psnr_gain_db", type=float, default=defaults.min_psnr_gain_db,
                   help="model PSNR minus gray PSNR must exceed this (default %(default)s dB)")
    p.add_argument("--min_colorfulness_gain", type=float, default=defaults.min_colorfulness_gain,
                   help="gray's |colorfulness gap| minus the model's must exceed this (default %(default)s)")
    p.add_argument("--max_psnr_drop_db", type=float, default=defaults.max_psnr_drop_db,
                   help="largest PSNR drop allowed against the baseline model (default %(default)s dB)")
    p.add_argument("--max_colorfulness_drop", type=float, default=defaults.max_colorfulness_drop,
                   help="largest growth of |colorfulness gap| allowed against the baseline model (default %(default)s)")
    return p


def _summary_line(name: str, m: dict) -> str:
    return (f"  {name:<9} PSNR {m['psnr']:7.3f} dB  SSIM {m['ssim']:.4f}  ab MSE {m['ab_mse']:9.2f}  "
            f"colorfulness {m['colorfulness']:6.2f} (truth {m['colorfulness_truth']:6.2f})  AUC {m['auc']:.4f}")


def main(argv: list[str] | None = None) -> int:
    """Parse flags and evaluate; one sentence and exit 2 for a mistake in the flags or inputs."""
    args = vars(_parser().parse_args(argv))
    thresholds = Thresholds(**{f.name: args.pop(f.name) for f in dataclasses.fields(Thresholds)})
    try:
        result = evaluate(EvalConfig(**args, thresholds=thresholds))
    except EvaluationError as e:
        print(f"evaluator: {e}", file=sys.stderr)
        return 2
    m = result.metrics
    print(f"evaluator: {m['images']} {m['split']} images at {m['image_size']}x{m['image_size']}")
    for name in ("model", "gray", "baseline"):
        if m[name] is not None:
            print(_summary_line(name, {k: float("nan") if v is None else v for k, v in m[name].items()}))
    written = [result.metrics_path, result.blessing_path, result.grid_path]
    if result.historical:
        written.append(f"{len(result.historical)} photos in {posixpath.dirname(result.historical[0])}")
    print(f"evaluator: wrote {', '.join(written)}")
    verdict = "BLESSED" if result.blessed else f"NOT BLESSED (failed: {', '.join(result.failed_checks)})"
    print(f"evaluator: model is {verdict}", flush=True)
    return 0


if __name__ == "__main__":
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger("components").addHandler(_handler)
    sys.exit(main())
