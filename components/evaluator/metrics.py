"""The evaluator's metrics and blessing: PSNR, SSIM, ab error, colourfulness and AuC, accumulated per batch.

The class-rebalanced AuC weights each pixel by the rebalancing weight of its true ab's nearest bin
(Zhang et al. 2016, components.colorbins): a lookup table over the 256 x 256 ab code grid, built once from the
prior (`weight_table`), is gathered inside the batch statistics, so memory stays flat.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from components import color
from components.settings import setting
from schemas import AB_OFFSET

AUC_MAX_THRESHOLD = 150
"""ab-error thresholds 0, 1, ..., 150 LAB units, Zhang et al. (2016)'s sweep."""
PSNR_CAP_DB = 100.0
"""PSNR of an image identical to its truth (infinite by definition), so means and JSON stay finite."""
AB_CODES = 256
"""ab codes per channel: the rebalancing lookup table covers AB_CODES x AB_CODES ab values (a-major)."""


@dataclasses.dataclass
class Thresholds:
    """Blessing thresholds; PSNR in dB, colourfulness in Hasler-Suesstrunk units.

    Every check stays configurable: a very negative min_psnr_gain_db or min_colorfulness_gain, or a very
    large max_psnr_drop_db or max_colorfulness_drop, disables its check in effect (it always passes);
    min_colorfulness_recovered <= 0 turns the colourfulness-recovered check off (it is then left out of
    blessing.json's checks; colorfulness_vs_gray still wants the model closer to the truth than gray).
    """

    min_psnr_gain_db: float = setting(
        -1.0, "model PSNR minus gray PSNR must exceed this, in dB: -1 lets the model's PSNR be at most 1 dB below "
        "gray's (a colourful model pays a little PSNR, the field's known trade-off); very negative: no PSNR check")
    min_colorfulness_gain: float = setting(
        0.0, "gray's |colorfulness pred - truth| minus the model's must exceed this; very negative: no check")
    min_colorfulness_recovered: float = setting(
        0.5, "share of gray's colourfulness gap (|gray - truth|) the model must close: 0.5 means at least half the "
        "truth's colourfulness, so a brownish or sepia model is not blessed; 0 or less: no check")
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


def weight_table(centres, weights) -> np.ndarray:
    """The rebalancing weight of every ab code's nearest bin, float64 [AB_CODES * AB_CODES], index a_code * 256 + b_code.

    `centres` [Q, 2] (LAB units) and `weights` [Q] as a components.colorbins.ColorPrior holds them
    (prior.weights); an ab value's code is round(ab) + AB_OFFSET, clipped to 0..255.
    """
    from components.colorbins import nearest_centre  # keras: only when a prior is given

    weights = np.asarray(weights, np.float64).reshape(-1)
    if len(weights) != len(np.asarray(centres).reshape(-1, 2)):
        raise ValueError(f"{len(weights)} rebalancing weights for {len(np.asarray(centres).reshape(-1, 2))} bins.")
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("rebalancing weights must be finite, non-negative and not all 0.")
    codes = np.arange(AB_CODES, dtype=np.float64) - AB_OFFSET
    grid = np.stack(np.meshgrid(codes, codes, indexing="ij"), -1).reshape(-1, 2)  # a-major: a_code * 256 + b_code
    return weights[nearest_centre(grid, centres)]


_NO_WEIGHTS = tf.zeros([0], tf.float64)


@tf.function(input_signature=[
    _images(3, tf.uint8), _images(3, tf.uint8), _images(2), _images(2), tf.TensorSpec([None], tf.float64)])
def _batch_stats(predicted_rgb, true_rgb, predicted_ab, true_ab, table):
    """Per-image PSNR and SSIM, the summed squared ab error, and ab-error counts per ceil(distance), plain and
    weighted by `table` (weight_table) at each pixel's true ab (zeros when the table is empty)."""
    psnr = tf.image.psnr(predicted_rgb, true_rgb, max_val=255)
    ssim = tf.image.ssim(predicted_rgb, true_rgb, max_val=255)
    error = predicted_ab - true_ab
    squared = tf.reduce_sum(tf.cast(tf.square(error), tf.float64))
    distance = tf.sqrt(tf.reduce_sum(tf.square(error), -1))
    bins = tf.reshape(tf.cast(tf.minimum(tf.math.ceil(distance), AUC_MAX_THRESHOLD + 1), tf.int32), [-1])
    counts = tf.math.bincount(
        bins, minlength=AUC_MAX_THRESHOLD + 2, maxlength=AUC_MAX_THRESHOLD + 2, dtype=tf.int64
    )

    def weighted():
        codes = tf.clip_by_value(tf.cast(tf.round(true_ab), tf.int32) + int(AB_OFFSET), 0, AB_CODES - 1)
        index = tf.reshape(codes[..., 0] * AB_CODES + codes[..., 1], [-1])
        return tf.math.bincount(
            bins, weights=tf.gather(table, index), minlength=AUC_MAX_THRESHOLD + 2,
            maxlength=AUC_MAX_THRESHOLD + 2, dtype=tf.float64,
        )

    weighted_counts = tf.cond(
        tf.size(table) > 0, weighted, lambda: tf.zeros([AUC_MAX_THRESHOLD + 2], tf.float64))
    return psnr, ssim, squared, counts, weighted_counts


class MetricAccumulator:
    """Running sums of one colorizer's metrics over batches; memory independent of the number of images.

    weight_table: `weight_table(prior.centres, prior.weights)`, for the class-rebalanced AuC (None: no
    rebalanced AuC, reported as None).
    """

    def __init__(self, neutral: bool = False, weight_table: np.ndarray | None = None):
        self.neutral = neutral
        if weight_table is not None:
            weight_table = np.asarray(weight_table, np.float64).reshape(-1)
            if weight_table.shape != (AB_CODES * AB_CODES,):
                raise ValueError(f"weight_table must hold {AB_CODES * AB_CODES} weights, got {weight_table.size}.")
        self._table = _NO_WEIGHTS if weight_table is None else tf.constant(weight_table, tf.float64)
        self.rebalanced = weight_table is not None
        self.images = 0
        self._sums = dict.fromkeys(
            ("psnr", "ssim", "colorfulness", "colorfulness_truth", "colorfulness_abs", "colorfulness_abs_truth"), 0.0
        )
        self._squared = 0.0
        self._values = 0
        self._counts = np.zeros(AUC_MAX_THRESHOLD + 2, np.int64)
        self._weighted = np.zeros(AUC_MAX_THRESHOLD + 2, np.float64)

    def update(self, l, predicted_ab, true_ab, true_rgb=None) -> np.ndarray:
        """Add one batch (ab in LAB units); returns the predictions as uint8 sRGB [B, S, S, 3]."""
        if true_rgb is None:
            true_rgb = render(l, true_ab)
        predicted_rgb = render(l, predicted_ab, self.neutral)
        psnr, ssim, squared, counts, weighted = _batch_stats(
            predicted_rgb, true_rgb, tf.cast(predicted_ab, tf.float32), tf.cast(true_ab, tf.float32), self._table
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
        self._weighted += weighted.numpy()
        self.images += len(predicted_rgb)
        return predicted_rgb

    def auc_curve(self) -> np.ndarray:
        """Share of pixels whose ab error is <= t, for t = 0, 1, ..., AUC_MAX_THRESHOLD."""
        total = self._counts.sum()
        return np.cumsum(self._counts)[: AUC_MAX_THRESHOLD + 1] / max(total, 1)

    def rebalanced_auc_curve(self) -> np.ndarray | None:
        """auc_curve with each pixel weighted by its true ab's bin weight; None without a weight table."""
        if not self.rebalanced:
            return None
        total = self._weighted.sum()
        return np.cumsum(self._weighted)[: AUC_MAX_THRESHOLD + 1] / total if total > 0 else None

    def result(self) -> dict[str, float]:
        """The METRICS dict of metrics.json."""
        if not self.images:
            raise ValueError("no images were added")
        mean = {name: value / self.images for name, value in self._sums.items()}
        rebalanced = self.rebalanced_auc_curve()
        truth = mean["colorfulness_truth"]
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
            "colorfulness_ratio": mean["colorfulness"] / truth if truth > 0 else None,
            "auc": float(self.auc_curve().mean()),
            "auc_rebalanced": float(rebalanced.mean()) if rebalanced is not None else None,
        }


# ---------------------------------------------------------------- blessing


def bless(metrics: dict, thresholds: Thresholds) -> tuple[bool, list[dict]]:
    """TFX-style blessing from a metrics.json dict: (blessed, checks as {"name", "passed", "detail"}).

    The checks, in order: psnr_vs_gray (the model's PSNR minus gray's > min_psnr_gain_db), colorfulness_vs_gray
    (gray's |colourfulness - truth| minus the model's > min_colorfulness_gain), colorfulness_recovered (the share
    of gray's gap the model closes >= min_colorfulness_recovered; passes when gray's gap is 0, left out when the
    threshold is <= 0) and, with a baseline, psnr_vs_baseline and colorfulness_vs_baseline. Only
    "colorfulness_diff" and "psnr" of each colorizer are read.
    """
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
    if t.min_colorfulness_recovered > 0:
        recovered = _recovered(model_gap, gray_gap)
        if recovered is None:
            check("colorfulness_recovered", True,
                  "gray's colourfulness gap to the truth is 0: there is no colour to recover")
        else:
            check("colorfulness_recovered", recovered >= t.min_colorfulness_recovered,
                  f"closes {recovered:.1%} of gray's colourfulness gap (|gray - truth| {gray_gap:.3f}, "
                  f"model {model_gap:.3f}), must close at least {t.min_colorfulness_recovered:.1%}")
    if baseline is not None:
        check("psnr_vs_baseline", model["psnr"] >= baseline["psnr"] - t.max_psnr_drop_db,
              f"PSNR {model['psnr']:.3f} dB vs last blessed {baseline['psnr']:.3f} dB: "
              f"change {model['psnr'] - baseline['psnr']:+.3f} dB, may drop at most {t.max_psnr_drop_db:g} dB")
        baseline_gap = abs(baseline["colorfulness_diff"])
        check("colorfulness_vs_baseline", model_gap <= baseline_gap + t.max_colorfulness_drop,
              f"|colorfulness pred - truth| {model_gap:.3f} vs last blessed {baseline_gap:.3f}: "
              f"may grow by at most {t.max_colorfulness_drop:g}")
    return all(c["passed"] for c in checks), checks


def _recovered(model_gap: float, gray_gap: float) -> float | None:
    """The share of gray's colourfulness gap the model closes (1: the truth's colourfulness; None: gray's gap is 0)."""
    return (gray_gap - model_gap) / gray_gap if gray_gap > 0 else None


def _share(m: dict) -> float | None:
    """A colorizer's colourfulness as a share of the truth's (metrics' colorfulness_ratio), None when unknown."""
    if m.get("colorfulness_ratio") is not None:
        return float(m["colorfulness_ratio"])
    if m.get("colorfulness") is not None and m.get("colorfulness_truth"):
        return m["colorfulness"] / m["colorfulness_truth"]
    return None


def _pct(share: float, other: float | None = None) -> str:
    """A share as a whole percentage; with one decimal where it would read the same as `other` (a limit)."""
    if other is not None and f"{share:.0%}" == f"{other:.0%}" and share != other:
        return f"{share:.1%}"
    return f"{share:.0%}"


def _too(m: dict) -> str:
    """Which way a colorizer's colourfulness misses the truth's, in words."""
    return "too dull (gray or sepia)" if m["colorfulness_diff"] < 0 else "over-saturated"


def reason(metrics: dict, thresholds: Thresholds, checks: list[dict]) -> str:
    """One sentence, for a person, saying why the model is (not) blessed: blessing.json's "reason"."""
    model, gray, baseline = metrics["model"], metrics["gray"], metrics.get("baseline")
    t = thresholds
    failed = {c["name"] for c in checks if not c["passed"]}
    share, gray_share = _share(model), _share(gray)
    base_share = _share(baseline) if baseline is not None else None
    if not failed:
        if t.min_psnr_gain_db < 0:
            rule = f", at most {-t.min_psnr_gain_db:g} dB below allowed"
        elif t.min_psnr_gain_db > 0:
            rule = f", must beat it by more than {t.min_psnr_gain_db:g} dB"
        else:
            rule = ", must beat it"
        last = f", last blessed {baseline['psnr']:.1f} dB" if baseline is not None else ""
        words = f"blessed: PSNR {model['psnr']:.1f} dB (gray {gray['psnr']:.1f} dB{rule}{last})"
        if share is not None:
            words += f", colourfulness {_pct(share)} of the truth's"
            if base_share is not None:
                words += f" (last blessed {_pct(base_share)})"
        if model.get("auc_rebalanced") is not None and gray.get("auc_rebalanced") is not None:
            words += f", rebalanced AuC {model['auc_rebalanced']:.3f} (gray {gray['auc_rebalanced']:.3f})"
        return words + "."

    clauses = []
    model_gap, gray_gap = abs(model["colorfulness_diff"]), abs(gray["colorfulness_diff"])
    if "psnr_vs_gray" in failed:
        gain, need = model["psnr"] - gray["psnr"], t.min_psnr_gain_db
        if need < 0:
            clauses.append(f"its PSNR {model['psnr']:.1f} dB is {-gain:.2f} dB below gray's {gray['psnr']:.1f} dB, "
                           f"more than the {-need:g} dB allowed: its colours are more often wrong than right")
        elif gain > 0:
            clauses.append(f"its PSNR {model['psnr']:.1f} dB beats gray's {gray['psnr']:.1f} dB by only {gain:.2f} dB, "
                           f"and must beat it by more than {need:g} dB")
        else:
            clauses.append(f"its PSNR {model['psnr']:.1f} dB does not beat gray's {gray['psnr']:.1f} dB"
                           + (f" by more than {need:g} dB" if need > 0 else ""))
    if "colorfulness_recovered" in failed:
        need = t.min_colorfulness_recovered
        if share is not None and gray_share is not None:
            truth = model.get("colorfulness_truth") or (model["colorfulness"] / share if share else None)
            spread = (1 - need) * gray_gap / truth if truth else 0.0  # the allowed |share - 1|
            low, high = 1 - spread, 1 + spread
            if model["colorfulness_diff"] < 0:
                clauses.append(f"its colourfulness is {_pct(share, low)} of the truth's (gray: {_pct(gray_share)}), "
                               f"and a model must recover at least {_pct(low)} of it: the colour is {_too(model)}")
            else:
                clauses.append(f"its colourfulness is {_pct(share, high)} of the truth's (gray: {_pct(gray_share)}), "
                               f"more than the {_pct(high)} allowed: the colour is {_too(model)}")
        else:
            recovered = _recovered(model_gap, gray_gap) or 0.0
            clauses.append(f"its colourfulness closes {_pct(recovered)} of gray's gap to the truth's, and a model must "
                           f"close at least {_pct(need)}: the colour is {_too(model)}")
    elif "colorfulness_vs_gray" in failed:
        need = t.min_colorfulness_gain
        start = (f"its colourfulness ({_pct(share)} of the truth's) is" if share is not None and gray_share is not None
                 else f"its colourfulness gap to the truth ({model_gap:.2f}) is")
        versus = f"gray's ({_pct(gray_share)})" if share is not None and gray_share is not None else \
            f"gray's ({gray_gap:.2f})"
        if need <= 0 or gray_gap <= model_gap:
            clauses.append(f"{start} no closer to the truth's than {versus}: the colour is {_too(model)}")
        else:
            clauses.append(f"{start} closer to the truth's than {versus} by only {gray_gap - model_gap:.2f}, and must "
                           f"be by more than {need:g}: the colour is {_too(model)}")
    if "psnr_vs_baseline" in failed:
        clauses.append(f"its PSNR {model['psnr']:.1f} dB is {baseline['psnr'] - model['psnr']:.2f} dB below the last "
                       f"blessed model's {baseline['psnr']:.1f} dB, more than the {t.max_psnr_drop_db:g} dB allowed")
    if "colorfulness_vs_baseline" in failed:
        grown = model_gap - abs(baseline["colorfulness_diff"])
        if share is not None and base_share is not None:
            clauses.append(f"its colourfulness ({_pct(share)} of the truth's) is further from the truth's than the "
                           f"last blessed model's ({_pct(base_share)}) by {grown:.2f}, more than the "
                           f"{t.max_colorfulness_drop:g} allowed: the colour is {_too(model)}")
        else:
            clauses.append(f"its colourfulness gap to the truth ({model_gap:.2f}) is {grown:.2f} larger than the last "
                           f"blessed model's, more than the {t.max_colorfulness_drop:g} allowed")
    for name in sorted(failed - {"psnr_vs_gray", "colorfulness_vs_gray", "colorfulness_recovered",
                                 "psnr_vs_baseline", "colorfulness_vs_baseline"}):
        clauses.append(f"it fails {name}")
    return "not blessed: " + "; ".join(clauses) + "."
