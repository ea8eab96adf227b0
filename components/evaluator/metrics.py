"""The evaluator's metrics and blessing: PSNR, SSIM, ab error, colourfulness and AuC, accumulated per batch."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from components import color
from components.settings import setting

AUC_MAX_THRESHOLD = 150
"""ab-error thresholds 0, 1, ..., 150 LAB units, Zhang et al. (2016)'s sweep."""
PSNR_CAP_DB = 100.0
"""PSNR of an image identical to its truth (infinite by definition), so means and JSON stay finite."""


@dataclasses.dataclass
class Thresholds:
    """Blessing thresholds; PSNR in dB, colourfulness in Hasler-Suesstrunk units."""

    min_psnr_gain_db: float = setting(0.0, "model PSNR minus gray PSNR must exceed this, in dB")
    min_colorfulness_gain: float = setting(
        0.0, "gray's |colorfulness pred - truth| minus the model's must exceed this")
    max_psnr_drop_db: float = setting(
        0.1, "against the last blessed model: model PSNR >= baseline PSNR - this, in dB")
    max_colorfulness_drop: float = setting(
        1.0, "against the last blessed model: |model colorfulness gap| <= the baseline's + this")


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

