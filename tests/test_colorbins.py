"""components.colorbins: the ab bins, soft encoding, annealed mean, prior, rebalancing and its loss (no data, CPU)."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import colorbins
from schemas import AB_OFFSET, AB_SCALE


@pytest.fixture(scope="module")
def centres():
    return colorbins.in_gamut_centres()


def srgb_ab(step: int = 15) -> np.ndarray:
    """ab [N, 2] of a grid of 8-bit sRGB colours (tfio's converter): in-gamut colours by construction."""
    from components.color import rgb_to_lab

    v = np.arange(0, 256, step) / 255.0
    rgb = np.stack(np.meshgrid(v, v, v, indexing="ij"), axis=-1).reshape(-1, 3)
    return np.asarray(rgb_to_lab(rgb))[:, 1:]


def index_of(centres, a, b) -> int:
    return int(np.flatnonzero((centres[:, 0] == a) & (centres[:, 1] == b))[0])


# ---------------------------------------------------------------- bins


def test_centres_are_the_grid_points_near_the_srgb_gamut(centres):
    assert centres.dtype == np.float32 and centres.shape[1] == 2
    assert 300 <= len(centres) <= 330
    assert not centres.flags.writeable and colorbins.in_gamut_centres() is centres
    assert np.all(centres % colorbins.GRID == 0) and np.abs(centres).max() <= 110
    assert len(np.unique(centres, axis=0)) == len(centres)
    # every 8-bit sRGB colour's nearest grid point is a bin; the far corners are not
    grid = np.round(srgb_ab() / colorbins.GRID) * colorbins.GRID
    assert {tuple(p) for p in grid} <= {tuple(c) for c in centres.tolist()}
    assert (110.0, 110.0) not in {tuple(c) for c in centres.tolist()}
    assert (-110.0, -110.0) not in {tuple(c) for c in centres.tolist()}


# ---------------------------------------------------------------- encoding and decoding


def test_soft_encoding_is_a_distribution_on_the_nearest_bins(centres):
    ab = np.random.default_rng(0).uniform(-120, 120, size=(2, 5, 7, 2)).astype(np.float32)
    z = colorbins.soft_encode(ab, centres, sigma=5.0, neighbours=5).numpy()
    assert z.shape == (2, 5, 7, len(centres)) and z.dtype == np.float32
    np.testing.assert_allclose(z.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.count_nonzero(z, axis=-1) == 5) and z.min() >= 0
    flat, points = z.reshape(-1, len(centres)), ab.reshape(-1, 2)
    d2 = ((points[:, None, :] - centres[None]) ** 2).sum(-1)
    nearest5 = np.argsort(d2, axis=1)[:, :5]
    assert all(set(np.flatnonzero(row)) == set(n) for row, n in zip(flat, nearest5))
    assert np.all(flat.argmax(-1) == d2.argmin(-1))
    # a colour on a centre: the Gaussian weights exp(-d^2 / 50) of it and its four grid neighbours
    one = colorbins.soft_encode([[20.0, -30.0]], centres).numpy()[0]
    expected = np.array([1.0] + [np.exp(-100 / 50)] * 4)
    np.testing.assert_allclose(np.sort(one[one > 0])[::-1], expected / expected.sum(), rtol=1e-5)
    assert one.argmax() == index_of(centres, 20, -30)
    with pytest.raises(ValueError, match="neighbours"):
        colorbins.soft_encode(ab, centres, neighbours=0)


def test_annealed_mean_at_low_temperature_decodes_the_encoding(centres):
    ab = srgb_ab()
    logits = tf.math.log(colorbins.soft_encode(ab, centres) + 1e-12)
    decoded = colorbins.annealed_mean(logits, centres, temperature=0.01).numpy()
    assert decoded.shape == ab.shape
    assert np.abs(decoded - ab).max() <= colorbins.GRID / 2 + 1e-3  # within half a bin
    # T = 1 is the distribution's mean
    z = colorbins.soft_encode(ab, centres).numpy()
    mean = colorbins.annealed_mean(np.log(z + 1e-30), centres, temperature=1.0).numpy()
    np.testing.assert_allclose(mean, z @ centres, atol=1e-3)


def model_with_annealed_mean(q: int) -> keras.Model:
    l = keras.Input(shape=(8, 8, 1), name="l")
    logits = keras.layers.Conv2D(q, 1, name="logits")(l / 50.0 - 1.0)
    return keras.Model(l, colorbins.AnnealedMean(temperature=0.38, name="annealed_mean")(logits))


def test_annealed_mean_layer_survives_save_and_load(centres, tmp_path):
    keras.utils.set_random_seed(0)
    model = model_with_annealed_mean(len(centres))
    l = np.random.default_rng(1).uniform(0, 100, size=(2, 8, 8, 1)).astype(np.float32)
    out = model.predict(l, verbose=0)
    assert out.shape == (2, 8, 8, 2) and out.dtype == np.float32 and np.abs(out).max() <= 1.0
    logits = model.get_layer("logits")(l / 50.0 - 1.0)
    np.testing.assert_allclose(out, colorbins.annealed_mean(logits, centres, 0.38).numpy() / AB_SCALE, atol=1e-6)

    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")  # the registration is all it needs
    np.testing.assert_array_equal(loaded.predict(l, verbose=0), out)
    layer = loaded.get_layer("annealed_mean")
    assert layer.temperature == pytest.approx(0.38) and np.array_equal(layer.centres, centres)
    layer.temperature = 1.0  # changeable after loading, and seen by the traced predict function
    np.testing.assert_allclose(
        loaded.predict(l, verbose=0), colorbins.annealed_mean(logits, centres, 1.0).numpy() / AB_SCALE, atol=1e-6
    )
    with pytest.raises(ValueError, match="temperature"):
        layer.temperature = 0.0


def test_annealed_mean_is_float32_under_mixed_precision(centres):
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = model_with_annealed_mean(len(centres))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert model.get_layer("logits").compute_dtype == "float16"
    assert model(np.full((1, 8, 8, 1), 50.0, np.float32)).dtype == tf.float32


# ---------------------------------------------------------------- prior and weights


def test_prior_peaks_at_the_histograms_colour(centres):
    from components.example_gen import bin_ab, histograms

    # the histogram as example_gen builds it, from packed L | a << 8 | b << 16 codes: mostly a = 30, b = -40
    a_code, b_code = int(30 + AB_OFFSET), int(-40 + AB_OFFSET)
    rng = np.random.default_rng(2)
    noise = rng.integers(0, 256, size=(500, 3))
    codes = np.concatenate([np.tile([[128, a_code, b_code]], (5000, 1)), noise])
    packed = (codes[:, 0] | codes[:, 1] << 8 | codes[:, 2] << 16).astype(np.uint32)
    _, counts = histograms(packed)
    assert counts[a_code, b_code] == 5000 + np.sum((noise[:, 1] == a_code) & (noise[:, 2] == b_code))

    prior = colorbins.prior_from_counts(counts, centres)
    assert prior.shape == (len(centres),) and prior.sum() == pytest.approx(1.0) and prior.min() > 0
    assert prior.argmax() == index_of(centres, 30, -40)
    # the smoothing spreads into the neighbours, and the transposed colour gets nothing special
    assert prior[index_of(centres, 40, -40)] > prior[index_of(centres, 50, -40)]
    assert prior[index_of(centres, -40, 30)] < prior.max() / 100
    with pytest.raises(ValueError, match="256x256"):
        colorbins.prior_from_counts(counts[:128], centres)
    # statistics.json's binned histogram (4x4 codes per cell) gives nearly the same prior
    binned = colorbins.prior_from_counts(bin_ab(counts), centres)
    assert binned.argmax() == prior.argmax() and np.abs(binned - prior).max() < 0.05


def test_weights_are_normalised_and_favour_rare_bins(centres):
    counts = np.zeros((256, 256), np.int64)
    rng = np.random.default_rng(3)
    ab = rng.normal(0, 20, size=(20000, 2))  # desaturated colours common, saturated ones rare
    np.add.at(counts, tuple(np.clip(np.round(ab + AB_OFFSET), 0, 255).astype(int).T), 1)
    prior = colorbins.prior_from_counts(counts, centres)
    weights = colorbins.rebalance_weights(prior, lam=0.5)
    assert np.all(np.isfinite(weights)) and weights.min() > 0
    assert np.sum(prior * weights) == pytest.approx(1.0)
    order = np.argsort(prior)
    assert np.all(np.diff(weights[order]) <= 1e-9)  # rarer bin, larger weight
    assert weights[index_of(centres, 0, 0)] < 1 < weights[index_of(centres, 60, 60)]
    np.testing.assert_allclose(colorbins.rebalance_weights(prior, lam=1.0), 1.0)  # lam = 1: no rebalancing
    with pytest.raises(ValueError, match="lam"):
        colorbins.rebalance_weights(prior, lam=0.0)


def test_color_prior_round_trips_and_checks_bins(centres, tmp_path):
    counts = np.zeros((256, 256), np.int64)
    counts[128:140, 120:130] = 7
    prior = colorbins.ColorPrior.from_counts(counts, centres)
    assert prior.pixels == counts.sum() and prior.lam == 0.5 and prior.grid == colorbins.GRID
    path = str(tmp_path / "prior.json")
    prior.save(path)
    loaded = colorbins.ColorPrior.load(path)
    assert loaded.fingerprint == prior.fingerprint and len(prior.fingerprint) == 64
    np.testing.assert_array_equal(loaded.prior, prior.prior)
    np.testing.assert_array_equal(loaded.weights, prior.weights)
    loaded.check_compatible(centres)
    with pytest.raises(ValueError, match="differ"):
        loaded.check_compatible(centres[1:])
    with pytest.raises(ValueError, match="differ"):
        loaded.check_compatible(centres[::-1])


def test_render_prior_png(centres):
    from PIL import Image

    counts = np.ones((256, 256), np.int64)
    png = colorbins.render_prior_png(colorbins.ColorPrior.from_counts(counts, centres))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.mode == "RGB" and image.width > 1.9 * image.height


# ---------------------------------------------------------------- the loss


def test_loss_prefers_the_true_bin_and_ignores_gray_images(centres):
    q = len(centres)
    weights = np.linspace(0.5, 2.0, q)
    loss = colorbins.RebalancedCrossEntropy(centres, weights)
    rng = np.random.default_rng(4)
    ab = np.tile(rng.uniform(-40, 40, size=(2, 1, 1, 2)), (1, 16, 16, 1)).astype(np.float32)  # flat colours
    y_true = ab / AB_SCALE
    for s in (1, 2, 4):
        side = 16 // s
        uniform = np.zeros((2, side, side, q), np.float32)
        z = colorbins.soft_encode(ab[:, :side, :side], centres).numpy()
        right = 10.0 * z  # mass on the target's bins
        assert float(loss(y_true, right)) < float(loss(y_true, uniform))
        # the uniform logits' value: log Q, weighted by each image's nearest bin
        nearest = z.reshape(2, -1, q)[:, 0].argmax(-1)
        assert float(loss(y_true, uniform)) == pytest.approx(np.log(q) * weights[nearest].mean(), rel=1e-5)

    gray = np.zeros((2, 16, 16, 2), np.float32)
    gray[0, 3, 3] = 2.0 / AB_SCALE  # a little noise, under the 5-unit threshold
    assert float(loss(gray, np.random.default_rng(5).normal(size=(2, 4, 4, q)).astype(np.float32))) == 0.0
    # one gray image in the batch: its pixels weigh 0, the mean still counts them
    mixed = np.concatenate([y_true[:1], gray[:1]])
    uniform = np.zeros((2, 4, 4, q), np.float32)
    nearest = colorbins.soft_encode(ab[0, 0, 0], centres).numpy().argmax()
    assert float(loss(mixed, uniform)) == pytest.approx(np.log(q) * weights[nearest] / 2, rel=1e-5)
    with pytest.raises(ValueError, match="pool"):
        loss(y_true, np.zeros((2, 5, 5, q), np.float32))


def test_loss_pools_the_target_to_the_logits_resolution(centres):
    loss = colorbins.RebalancedCrossEntropy(centres, np.linspace(0.5, 2.0, len(centres)))
    ab = np.random.default_rng(7).uniform(-60, 60, size=(2, 8, 8, 2)).astype(np.float32)
    logits = np.random.default_rng(8).normal(size=(2, 2, 2, len(centres))).astype(np.float32)
    pooled = ab.reshape(2, 2, 4, 2, 4, 2).mean(axis=(2, 4))  # 4x4 blocks: s = 4
    assert float(loss(ab / AB_SCALE, logits)) == pytest.approx(float(loss(pooled / AB_SCALE, logits)), rel=1e-5)
    assert float(loss(ab / AB_SCALE, logits)) != pytest.approx(float(loss(ab[:, ::4, ::4] / AB_SCALE, logits)))


def test_loss_survives_save_and_load(centres, tmp_path):
    q = len(centres)
    keras.utils.set_random_seed(0)
    l = keras.Input(shape=(16, 16, 1))
    model = keras.Model(l, keras.layers.Conv2D(q, 3, strides=4, padding="same")(l / 100.0))
    weights = np.linspace(2.0, 0.5, q)
    model.compile(optimizer="adam", loss=colorbins.RebalancedCrossEntropy(centres, weights, gray_threshold=4.0))
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 100, size=(2, 16, 16, 1)).astype(np.float32)
    y = rng.uniform(-0.5, 0.5, size=(2, 16, 16, 2)).astype(np.float32)
    before = model.evaluate(x, y, verbose=0)

    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(before, rel=1e-6)
    restored = loaded.loss
    assert isinstance(restored, colorbins.RebalancedCrossEntropy)
    np.testing.assert_allclose(restored.weights, weights.astype(np.float32))
    assert restored.gray_threshold == 4.0 and np.array_equal(restored.centres, centres)
    history = loaded.fit(x, y, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))
