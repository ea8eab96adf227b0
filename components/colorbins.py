"""Colour as classification: the ab bins, soft encoding, annealed mean, class rebalancing and its loss.

Zhang, Isola, Efros, "Colorful Image Colorization" (ECCV 2016): instead of
regressing ab (whose L2 optimum is the mean of the plausible colours, a
desaturated brown-gray), the model predicts a distribution over Q quantised ab
bins, trained with a cross-entropy against the target's soft encoding and
reweighted so rare (saturated) colours count as much as the common
desaturated ones; the ab it outputs is the distribution's annealed mean.

    centres = in_gamut_centres()                                  # [Q, 2], Q = 309
    prior = ColorPrior.from_counts(ab_hist)                       # example_gen's 256x256 ab code histogram
    loss = RebalancedCrossEntropy(centres, prior.weights)         # y_true ab/128, y_pred logits [B, h, w, Q]
    ab = AnnealedMean(centres, temperature=0.38)(logits)          # -> ab/128, the regression output contract

Units: ab in LAB units (about -128..127) everywhere here except at the
model's edges, where the loss's y_true and AnnealedMean's output are
ab / AB_SCALE like the regression models'. LAB is sRGB D65 (2 degree
observer), as components.color and skimage.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json

import keras
import numpy as np
import tensorflow as tf

from schemas import AB_OFFSET, AB_SCALE

GRID = 10  # ab units between bin centres, the paper's grid
_RANGE = 110  # centres on k * GRID for a, b in [-_RANGE, _RANGE]
_PRIOR_VERSION = 1

# tensorflow-io's (and skimage's) D65 white and XYZ -> linear sRGB matrix, so the gamut is the one
# components.color.lab_to_rgb renders into.
_WHITE = np.array([0.95047, 1.0, 1.08883])
_XYZ_TO_RGB = np.array(
    [
        [3.24048134, -1.53715152, -0.49853633],
        [-0.96925495, 1.87599, 0.04155593],
        [0.05564664, -0.20404134, 1.05731107],
    ]
)


# ---------------------------------------------------------------- the bins


def _lab_to_linear_rgb(lab: np.ndarray) -> np.ndarray:
    """float LAB [..., 3] -> linear sRGB [..., 3], unclipped (in gamut iff every channel is in [0, 1])."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > 6.0 / 29.0, f**3, (f - 16.0 / 116.0) * (3.0 * (6.0 / 29.0) ** 2)) * _WHITE
    return xyz @ _XYZ_TO_RGB.T


def _lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """float LAB [..., 3] -> gamma-encoded sRGB in [0, 1], clipped (for pictures)."""
    linear = np.clip(_lab_to_linear_rgb(lab), 0.0, 1.0)
    return np.where(linear > 0.0031308, 1.055 * linear ** (1.0 / 2.4) - 0.055, 12.92 * linear)


@functools.lru_cache(maxsize=1)
def in_gamut_centres() -> np.ndarray:
    """The Q bin centres [Q, 2] (float32, LAB units, a-major order): grid points of the ab plane sRGB can reach.

    A centre k * GRID (a, b in [-110, 110]) is kept when some ab within GRID of it in max-norm (its own
    cell widened by half a cell on every side, sampled every 2.5 units) is in the sRGB gamut, within 1e-3
    in linear RGB, for some L in 0..100 (0.5 steps). Gives Q = 309 bins, against the paper's 313: the
    cells that the 8-bit sRGB colours actually land in number about 262; the half-cell margin, about
    the paper's count, gives the colours at the gamut's edge a full ring of neighbours for the soft
    encoding. Read-only and cached: the bins are the models' output classes, so they must never vary.
    """
    step = GRID / 4.0
    axis = np.arange(-_RANGE - GRID, _RANGE + GRID + step / 2, step)  # the fine ab grid around every centre
    a, b = np.meshgrid(axis, axis, indexing="ij")
    reachable = np.zeros(a.shape, bool)
    for l in np.arange(0.0, 100.0 + 0.25, 0.5):
        rgb = _lab_to_linear_rgb(np.stack([np.full_like(a, l), a, b], axis=-1))
        reachable |= np.all((rgb >= -1e-3) & (rgb <= 1.0 + 1e-3), axis=-1)
    per_cell = round(GRID / step)  # fine points per grid step
    grid = np.arange(-_RANGE, _RANGE + 1, GRID)
    keep = []
    for i, ca in enumerate(grid):
        for j, cb in enumerate(grid):
            # the fine points within GRID of (ca, cb): indices i * per_cell .. (i + 2) * per_cell
            if reachable[i * per_cell : (i + 2) * per_cell + 1, j * per_cell : (j + 2) * per_cell + 1].any():
                keep.append((ca, cb))
    centres = np.asarray(keep, np.float32)
    centres.flags.writeable = False
    return centres


def _centres(centres) -> np.ndarray:
    """Check and return bin centres as float32 [Q, 2]."""
    centres = np.asarray(in_gamut_centres() if centres is None else centres, np.float32)
    if centres.ndim != 2 or centres.shape[1] != 2 or centres.shape[0] < 2:
        raise ValueError(f"Bin centres must be an [Q, 2] array of ab pairs with Q >= 2, got shape {centres.shape}.")
    return centres


# ---------------------------------------------------------------- encoding and decoding


def soft_encode(ab, centres, sigma: float = 5.0, neighbours: int = 5):
    """ab [..., 2] (LAB units) -> float32 [..., Q]: the paper's soft encoding of a target colour.

    Gaussian weights exp(-d^2 / (2 sigma^2)) on the `neighbours` nearest centres, zero elsewhere,
    normalised to sum 1: a one-hot target would make neighbouring bins, nearly the same colour, as
    wrong as any other. The distances come from one matmul (|x|^2 - 2 x.c + |c|^2) and the result
    from one scatter, so it runs per pixel per batch: 25-50 ms for 16 x 32 x 32 pixels, 115-210 ms for
    16 x 64 x 64, on two busy CPU cores inside a tf.function (top_k over the Q bins is most of it).
    """
    centres = tf.constant(_centres(centres))
    q = centres.shape[0]
    if not 1 <= neighbours <= q:
        raise ValueError(f"soft_encode's neighbours must be in 1..{q} (the number of bins), got {neighbours}.")
    if not sigma > 0:
        raise ValueError(f"soft_encode's sigma must be positive (ab units), got {sigma}.")
    ab = tf.convert_to_tensor(ab, tf.float32)
    x = tf.reshape(ab, [-1, 2])
    d2 = (
        tf.reduce_sum(tf.square(x), axis=-1, keepdims=True)
        - 2.0 * tf.matmul(x, centres, transpose_b=True)
        + tf.reduce_sum(tf.square(centres), axis=-1)[None, :]
    )
    closeness, index = tf.math.top_k(-d2, k=neighbours)  # -d^2, nearest first
    # relative to the nearest, so colours far from every centre do not underflow to 0 / 0
    weight = tf.exp((closeness - closeness[:, :1]) / (2.0 * sigma * sigma))
    weight = weight / tf.reduce_sum(weight, axis=-1, keepdims=True)
    rows = tf.broadcast_to(tf.range(tf.shape(x)[0])[:, None], tf.shape(index))
    encoded = tf.scatter_nd(
        tf.stack([rows, index], axis=-1), weight, tf.stack([tf.shape(x)[0], q])
    )
    return tf.reshape(encoded, tf.concat([tf.shape(ab)[:-1], [q]], axis=0))


def annealed_mean(logits, centres, temperature: float = 0.38):
    """Logits [..., Q] -> ab [..., 2] (LAB units): the expectation over the centres of softmax(logits / T).

    The paper's annealed mean re-weights the predicted distribution z as exp(log z / T), normalised;
    with z = softmax(logits) that is softmax(logits / T). T trades: T -> 0 gives the mode (vivid, but it
    can flip between bins from pixel to pixel: blotchy); T = 1 the mean (desaturated, the regression
    failure); the paper's 0.38 keeps most of the mode's vividness and the mean's spatial consistency.
    Computed in float32 whatever the logits' dtype.
    """
    centres = tf.constant(_centres(centres))
    logits = tf.cast(logits, tf.float32)
    probabilities = tf.nn.softmax(logits / tf.cast(temperature, tf.float32), axis=-1)
    # reshape + matmul, not tf.einsum("...q,qc->...c"): with oneDNN on (TF 2.16's CPU default) that
    # einsum returns wrong sums once there are about 1,000 rows
    flat = tf.matmul(tf.reshape(probabilities, [-1, centres.shape[0]]), centres)
    return tf.reshape(flat, tf.concat([tf.shape(logits)[:-1], [2]], axis=0))


@keras.saving.register_keras_serializable(package="colorization")
class AnnealedMean(keras.layers.Layer):
    """Logits [B, H, W, Q] -> ab / AB_SCALE [B, H, W, 2]: the classification model's regression output.

    Dividing by AB_SCALE keeps the contract of the regression models (the trainer's callbacks, the
    evaluator and the serving graph multiply the output by AB_SCALE). Float32 even under mixed
    precision. `temperature` (see `annealed_mean` for what it trades) is a non-trainable variable read at
    call time: set `layer.temperature = 0.2` after loading and already-traced functions see it too.
    The centres are in the config, so a saved .keras model reloads with only this module imported.
    """

    def __init__(self, centres=None, temperature: float = 0.38, **kwargs):
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.centres = _centres(centres)
        self._temperature = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(_check_temperature(temperature)),
            trainable=False, name="temperature", dtype="float32",
        )

    @property
    def temperature(self) -> float:
        return float(keras.ops.convert_to_numpy(self._temperature))

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature.assign(_check_temperature(value))

    def call(self, logits):
        if logits.shape[-1] is not None and logits.shape[-1] != len(self.centres):
            raise ValueError(
                f"AnnealedMean got {logits.shape[-1]} logits per pixel for {len(self.centres)} bins; "
                "give the last Conv2D one filter per bin."
            )
        return annealed_mean(logits, self.centres, self._temperature) / AB_SCALE

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (2,)

    def get_config(self):
        return {**super().get_config(), "centres": self.centres.tolist(), "temperature": self.temperature}


def _check_temperature(value) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"The annealed mean's temperature must be positive (0.38 is the paper's), got {value}.")
    return value


# ---------------------------------------------------------------- the prior and the rebalancing weights


def nearest_centre(ab: np.ndarray, centres) -> np.ndarray:
    """ab [N, 2] (LAB units) -> int [N]: index of each point's nearest centre (numpy, in chunks)."""
    centres = _centres(centres).astype(np.float64)
    ab = np.asarray(ab, np.float64).reshape(-1, 2)
    out = np.empty(len(ab), np.int64)
    for start in range(0, len(ab), 8192):
        chunk = ab[start : start + 8192]
        out[start : start + 8192] = ((chunk[:, None, :] - centres[None]) ** 2).sum(-1).argmin(-1)
    return out


def prior_from_counts(counts, centres, sigma: float = 5.0) -> np.ndarray:
    """ab code histogram [256, 256] -> the smoothed empirical distribution over the bins, float64 [Q].

    `counts` is example_gen's `histograms()[1]` (summed over images: the ingest accumulator's
    "ab_hist"), indexed [a code, b code] with a = a_code - 128, b = b_code - 128. (There the flat
    bincount index is a_code + 256 b_code, so its reshape(256, 256) is [b, a] and the .T makes it
    [a, b].) A coarser [256 / n, 256 / n] histogram of n x n code cells, as `bin_ab` writes to
    statistics.json's "ab_histogram", is read the same way with each cell at its centre code.
    Each code's count goes to its nearest centre, out-of-gamut codes too; the Q-vector is then
    smoothed with a Gaussian of `sigma` ab units over the centres' positions, as the paper smooths its
    ImageNet histogram, and floored at 1e-12 of the total so every bin has some probability.
    """
    centres = _centres(centres)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] < 1 or 256 % counts.shape[0]:
        raise ValueError(
            f"prior_from_counts expects the 256x256 ab code histogram (or a 256/n binned one), got shape {counts.shape}."
        )
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(
            "prior_from_counts needs a histogram of non-negative counts with some pixels; check the ingest's statistics."
        )
    cell = 256 // counts.shape[0]  # codes per histogram cell: 1, or example_gen's AB_BIN
    a_index, b_index = np.nonzero(counts)
    ab = np.stack([a_index, b_index], axis=-1) * cell + (cell - 1) / 2.0 - AB_OFFSET
    nearest = nearest_centre(ab, centres)
    raw = np.bincount(nearest, weights=counts[a_index, b_index].astype(np.float64), minlength=len(centres))
    raw /= raw.sum()
    c = centres.astype(np.float64)
    kernel = np.exp(-((c[:, None, :] - c[None, :, :]) ** 2).sum(-1) / (2.0 * sigma * sigma))
    smooth = kernel @ raw
    smooth = smooth / smooth.sum() + 1e-12
    return smooth / smooth.sum()


def rebalance_weights(prior, lam: float = 0.5) -> np.ndarray:
    """Prior [Q] -> the paper's class-rebalancing weights, float64 [Q].

    w = ((1 - lam) p + lam / Q)^-1, normalised so the expected weight sum(p w) is 1 (the loss keeps the
    scale of an unweighted one). lam mixes the prior with the uniform distribution: 0 would weight every
    bin inversely to its frequency (rare bins explode), 1 is no rebalancing; the paper uses 0.5.
    """
    prior = np.asarray(prior, np.float64)
    if prior.ndim != 1 or (prior < 0).any() or not np.isfinite(prior).all() or prior.sum() <= 0:
        raise ValueError(
            "rebalance_weights expects a 1-D probability vector over the bins; build it with prior_from_counts."
        )
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"rebalance_weights' lam must be in (0, 1] (0.5 is the paper's), got {lam}.")
    prior = prior / prior.sum()
    weights = 1.0 / ((1.0 - lam) * prior + lam / len(prior))
    return weights / (prior * weights).sum()


@dataclasses.dataclass(frozen=True, eq=False)
class ColorPrior:
    """The bins' empirical distribution and rebalancing weights, as one JSON artifact with a fingerprint.

    `pixels` is how many pixels the histogram counted; `sigma` the smoothing, `lam` the weights' mix.
    """

    centres: np.ndarray  # [Q, 2] float32, LAB units
    prior: np.ndarray  # [Q] float64, sums to 1
    weights: np.ndarray  # [Q] float64, sum(prior * weights) == 1
    lam: float = 0.5
    sigma: float = 5.0
    grid: int = GRID
    pixels: int = 0

    @classmethod
    def from_counts(cls, counts, centres=None, lam: float = 0.5, sigma: float = 5.0) -> ColorPrior:
        """The prior of example_gen's 256x256 ab code histogram (see `prior_from_counts`)."""
        centres = _centres(centres)
        prior = prior_from_counts(counts, centres, sigma)
        return cls(centres, prior, rebalance_weights(prior, lam), float(lam), float(sigma), GRID, int(np.sum(counts)))

    def to_json(self) -> str:
        """Deterministic JSON (the fingerprint's input): floats round-trip exactly."""
        return json.dumps(
            {
                "version": _PRIOR_VERSION,
                "grid": int(self.grid),
                "sigma": float(self.sigma),
                "lam": float(self.lam),
                "pixels": int(self.pixels),
                "centres": np.asarray(self.centres, np.float64).tolist(),
                "prior": np.asarray(self.prior, np.float64).tolist(),
                "weights": np.asarray(self.weights, np.float64).tolist(),
            },
            sort_keys=True,
        )

    @property
    def fingerprint(self) -> str:
        """sha256 of the JSON: names this prior in a model's training summary."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()

    def save(self, path: str) -> None:
        """Write the JSON to `path` (local or gs://)."""
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str) -> ColorPrior:
        """Read a prior written by `save`."""
        with tf.io.gfile.GFile(path, "r") as f:
            data = json.loads(f.read())
        if not isinstance(data, dict) or data.get("version") != _PRIOR_VERSION:
            raise ValueError(
                f"{path} is not a colour prior of version {_PRIOR_VERSION}; rebuild it with ColorPrior.from_counts."
            )
        centres = _centres(data["centres"])
        prior, weights = np.asarray(data["prior"], np.float64), np.asarray(data["weights"], np.float64)
        if prior.shape != (len(centres),) or weights.shape != (len(centres),):
            raise ValueError(
                f"{path} has {len(centres)} bins but {prior.size} prior and {weights.size} weight values; rebuild it."
            )
        return cls(
            centres, prior, weights, float(data["lam"]), float(data["sigma"]), int(data["grid"]), int(data["pixels"])
        )

    def check_compatible(self, centres) -> None:
        """Raise ValueError unless `centres` (a model's bins) are this prior's bins, in the same order."""
        centres = _centres(centres)
        if centres.shape != self.centres.shape or not np.allclose(centres, self.centres, atol=1e-3):
            raise ValueError(
                f"The model's {len(centres)} colour bins differ from those of prior {self.fingerprint[:12]} "
                f"({len(self.centres)} bins); rebuild the prior with the model's centres."
            )


def load_prior(path: str, centres=None) -> ColorPrior:
    """The prior at `path`, checked against `centres` (default: in_gamut_centres()); ValueError with one sentence
    naming the file and the fix when it is missing, unreadable or made for other bins."""
    if not tf.io.gfile.exists(path):
        raise ValueError(f"prior file {path} does not exist; run python -m components.statistics on the examples "
                         "to write prior.json.")
    try:
        prior = ColorPrior.load(path)
    except (ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"prior file {path} is not a readable colour prior ({first.rstrip('.')}).") from None
    prior.check_compatible(in_gamut_centres() if centres is None else centres)
    return prior


def render_prior_png(prior: ColorPrior, scale: int = 8) -> bytes:
    """PNG of the prior (left) and the rebalancing weights (right) on the ab plane, a to the right, b upwards.

    Each bin is drawn in its colour at L=70, faded towards white as its log prior (log weight) falls
    from the largest to the smallest; grid cells that are not bins are light gray.
    """
    from PIL import Image

    centres = np.asarray(prior.centres, np.float64)
    grid = int(prior.grid)
    side = 2 * round(float(np.abs(centres).max()) / grid) + 1
    half = side // 2
    i = np.round(centres[:, 0] / grid).astype(int) + half
    j = np.round(centres[:, 1] / grid).astype(int) + half
    axis = (np.arange(side) - half) * float(grid)
    a, b = np.meshgrid(axis, axis, indexing="ij")
    colour = _lab_to_srgb(np.stack([np.full_like(a, 70.0), a, b], axis=-1))
    panels = []
    for values in (prior.prior, prior.weights):
        logv = np.log(np.asarray(values, np.float64))
        span = logv.max() - logv.min()
        t = (logv - logv.min()) / span if span > 0 else np.ones_like(logv)
        panel = np.full((side, side, 3), 0.85)
        panel[i, j] = colour[i, j] * t[:, None] + (1.0 - t[:, None])
        panels.append(panel.transpose(1, 0, 2)[::-1])  # as usually plotted: a to the right, b upwards
    gap = np.ones((side, 1, 3))
    picture = np.concatenate([panels[0], gap, panels[1]], axis=1)
    image = Image.fromarray(np.round(picture * 255).astype(np.uint8)).resize(
        (picture.shape[1] * scale, side * scale), Image.NEAREST
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- the loss


@keras.saving.register_keras_serializable(package="colorization")
class RebalancedCrossEntropy(keras.losses.Loss):
    """The paper's loss: y_true ab / AB_SCALE [B, H, W, 2], y_pred logits [B, H/s, W/s, Q] (s inferred).

    The target is average-pooled to the logits' resolution (the paper trains at 1/4), soft-encoded,
    and each pixel's cross-entropy -sum z log softmax(logits) is weighted by the rebalancing weight of
    the target's nearest bin. Every pixel of an image whose largest chroma sqrt(a^2 + b^2) is below
    `gray_threshold` ab units weighs 0: a gray photo teaches nothing about colour. The value is the
    mean over all the batch's pixels (zero-weight ones included, so the scale does not depend on how
    many gray images a batch holds).
    """

    def __init__(
        self,
        centres=None,
        weights=None,
        sigma: float = 5.0,
        neighbours: int = 5,
        gray_threshold: float = 5.0,
        name: str = "rebalanced_cross_entropy",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.centres = _centres(centres)
        weights = np.ones(len(self.centres)) if weights is None else np.asarray(weights, np.float64)
        if weights.shape != (len(self.centres),) or not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(
                f"RebalancedCrossEntropy needs one finite, non-negative weight per bin ({len(self.centres)}), "
                f"got shape {weights.shape}; use ColorPrior.weights."
            )
        self.weights = weights.astype(np.float32)
        self.sigma = float(sigma)
        self.neighbours = int(neighbours)
        self.gray_threshold = float(gray_threshold)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32) * AB_SCALE
        logits = tf.cast(y_pred, tf.float32)
        q = len(self.centres)
        if logits.shape[-1] is not None and logits.shape[-1] != q:
            raise ValueError(
                f"RebalancedCrossEntropy got {logits.shape[-1]} logits per pixel for {q} bins; "
                "give the model one output per bin."
            )
        chroma = tf.sqrt(tf.reduce_sum(tf.square(y_true), axis=-1))
        colourful = tf.cast(tf.reduce_max(chroma, axis=[1, 2]) >= self.gray_threshold, tf.float32)  # [B]
        target = _pool_to(y_true, tf.shape(logits)[1:3], y_true.shape[1:3], logits.shape[1:3])
        z = tf.stop_gradient(soft_encode(target, self.centres, self.sigma, self.neighbours))
        weight = tf.gather(tf.constant(self.weights), tf.argmax(z, axis=-1))
        cross_entropy = tf.nn.softmax_cross_entropy_with_logits(labels=z, logits=logits)
        return cross_entropy * weight * colourful[:, None, None]

    def get_config(self):
        return {
            **super().get_config(),
            "centres": self.centres.tolist(),
            "weights": self.weights.tolist(),
            "sigma": self.sigma,
            "neighbours": self.neighbours,
            "gray_threshold": self.gray_threshold,
        }


def _pool_to(ab, size, static_in, static_out):
    """Average-pool ab [B, H, W, 2] by the integer factor that makes it `size` [h, w]."""
    if None not in tuple(static_in) + tuple(static_out):
        (big_h, big_w), (h, w) = tuple(static_in), tuple(static_out)
        if big_h % h or big_w % w or big_h // h != big_w // w:
            raise ValueError(
                f"RebalancedCrossEntropy cannot pool a {big_h}x{big_w} target to {h}x{w} logits; "
                "make the logits' side the target's divided by 1, 2 or 4."
            )
        if big_h == h:
            return ab
    shape = tf.shape(ab)
    s = shape[1] // size[0]
    pooled = tf.reshape(ab, tf.stack([shape[0], size[0], s, size[1], s, 2]))
    return tf.reduce_mean(pooled, axis=[2, 4])
