"""Evaluator: metrics against gray and a baseline, blessing, test grid, historical photos, CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from components import color, colorbins, evaluator, loader, models
from components.evaluator import EvalConfig, Thresholds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
METRIC_KEYS = {
    "psnr", "ssim", "ab_mse", "colorfulness", "colorfulness_truth", "colorfulness_diff", "colorfulness_abs",
    "colorfulness_abs_truth", "colorfulness_abs_diff", "auc", "colorfulness_ratio", "auc_rebalanced",
}
SEPIA = (8.0, 18.0)
"""A constant brownish cast in LAB ab units: what an ab-regressing model tends to paint everywhere."""
HISTORICAL = {"portrait": ((37, 50), "L", "png"), "street": ((64, 41), "RGB", "jpg")}
"""stem -> ((width, height), PIL mode, extension) of the generated 'old photos'."""


def _export_predict_ab(model: keras.Model, size: int, path: str) -> str:
    """A serving-style SavedModel with only the predict_ab signature (l [-1,S,S,1] -> ab in LAB units)."""
    module = tf.Module()
    module.model = model
    module.predict_ab = tf.function(
        lambda l: {"ab": module.model(l, training=False) * loader.AB_SCALE},
        input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32, name="l")],
    )
    tf.saved_model.save(module, path, signatures={"predict_ab": module.predict_ab})
    return path


@pytest.fixture(scope="module")
def examples(ingested, ingest_config) -> str:
    """The session's ingested 64px corpus; its test split is small but real."""
    assert ingested["splits"]["test"]["count"] >= 3
    return ingest_config.output_dir


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> dict[str, str]:
    """A random-weights tiny Model 1 as .keras, the same weights as a SavedModel, and a 16px SavedModel."""
    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    model = models.build_model1(SIZE, width=0.25)
    model.save(str(root / "model.keras"))
    small = models.build_model1(16, width=0.25)
    return {
        "keras": str(root / "model.keras"),
        "same": _export_predict_ab(model, SIZE, str(root / "serving" / "colorizer" / "1")),
        "small": _export_predict_ab(small, 16, str(root / "small" / "1")),
    }


@pytest.fixture(scope="module")
def historical_dir(tmp_path_factory) -> str:
    """Two 'black-and-white photos' of odd sizes (one gray PNG, one JPEG) and one corrupt file."""
    folder = tmp_path_factory.mktemp("historical")
    rng = np.random.default_rng(1)
    for stem, ((width, height), mode, ext) in HISTORICAL.items():
        levels = rng.integers(0, 256, (height, width), dtype=np.uint8)
        image = Image.fromarray(levels) if mode == "L" else Image.fromarray(np.stack([levels] * 3, -1))
        image.save(folder / f"{stem}.{ext}")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return str(folder)


@pytest.fixture(scope="module")
def prior_path(tmp_path_factory) -> str:
    """A colour prior as the statistics stage writes it: most pixels dull (near a = b = 0), a few saturated."""
    a, b = np.meshgrid(np.arange(256) - 128.0, np.arange(256) - 128.0, indexing="ij")
    counts = np.round(1e4 * np.exp(-(a**2 + b**2) / (2 * 15.0**2))) + 1
    path = str(tmp_path_factory.mktemp("prior") / "prior.json")
    colorbins.ColorPrior.from_counts(counts).save(path)
    return path


@pytest.fixture(scope="module")
def evaluated(examples, models_dir, historical_dir, prior_path, tmp_path_factory):
    """One full evaluation: batches of 2, the same-weights SavedModel as baseline, historical photos, a prior."""
    out = str(tmp_path_factory.mktemp("eval"))
    config = EvalConfig(
        model=models_dir["keras"], examples=examples, output_dir=out, baseline_model=models_dir["same"],
        batch_size=2, historical_dir=historical_dir, prior=prior_path,
    )
    return evaluator.evaluate(config)


def _first_batch(examples: str, n: int = 3) -> tuple[tf.Tensor, tf.Tensor]:
    l, ab = loader.fixed_batch(examples, "test", image_size=SIZE, batch_size=n)
    return tf.constant(l), tf.constant(ab * loader.AB_SCALE)


# ---------------------------------------------------------------- metric functions


def test_truth_against_itself_is_perfect(examples):
    l, ab = _first_batch(examples)
    acc = evaluator.MetricAccumulator()
    acc.update(l, ab, ab)
    m = acc.result()
    assert m["psnr"] == evaluator.PSNR_CAP_DB
    assert m["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert m["ab_mse"] == 0.0 and m["auc"] == 1.0
    assert m["colorfulness_diff"] == 0.0 and m["colorfulness_abs_diff"] == 0.0
    assert m["colorfulness_truth"] > 10  # the synthetic scenes are colourful


def test_gray_has_no_colour_and_misses_pixels(examples):
    l, ab = _first_batch(examples)
    acc = evaluator.MetricAccumulator(neutral=True)
    acc.update(l, tf.zeros_like(ab), ab)
    m = acc.result()
    assert m["colorfulness"] == 0.0 and m["colorfulness_abs"] == 0.0
    assert m["colorfulness_diff"] == pytest.approx(-m["colorfulness_truth"])
    assert 0.0 < m["auc"] < 1.0
    assert m["ab_mse"] == pytest.approx(float(np.mean(np.square(ab.numpy()))), rel=1e-6)
    assert m["psnr"] < evaluator.PSNR_CAP_DB


def test_constant_ab_error_gives_exact_auc_mse_and_per_image_psnr(examples):
    """Every pixel 30 LAB units off (18, 24): the curve is 0 below 30 and 1 from 30 on."""
    l, ab = _first_batch(examples)
    predicted = ab + tf.constant([18.0, 24.0])
    acc = evaluator.MetricAccumulator()
    acc.update(l, predicted, ab)
    m = acc.result()
    curve = acc.auc_curve()
    assert curve[29] == 0.0 and curve[30] == 1.0
    assert m["auc"] == pytest.approx(121 / 151)
    assert m["ab_mse"] == pytest.approx((18**2 + 24**2) / 2)
    pred_rgb = evaluator.render(l, predicted).numpy().astype(np.float64)
    true_rgb = evaluator.render(l, ab).numpy().astype(np.float64)
    mse = np.mean((pred_rgb - true_rgb) ** 2, axis=(1, 2, 3))
    assert m["psnr"] == pytest.approx(np.mean(10 * np.log10(255.0**2 / mse)), rel=1e-4)


def test_colorfulness_variants_match_their_formulas():
    """Half pure red, half pure blue: rg = 255 | 0, yb = 127.5 | -255."""
    image = np.zeros((4, 6, 3), np.uint8)
    image[:, :3, 0] = 255
    image[:, 3:, 2] = 255
    rg, yb = np.array([255.0, 0.0]), np.array([127.5, -255.0])
    hs = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    absolute = np.hypot(np.abs(rg).std(), np.abs(yb).std()) + 0.3 * np.hypot(np.abs(rg).mean(), np.abs(yb).mean())
    assert color.colorfulness(image) == pytest.approx(hs, rel=1e-6)
    assert color.colorfulness_abs(image) == pytest.approx(absolute, rel=1e-6)
    assert color.colorfulness_abs(image) != pytest.approx(color.colorfulness(image))
    assert color.colorfulness_abs(np.full((5, 5, 3), 77, np.uint8)) == 0.0


# ---------------------------------------------------------------- blessing rule


def _metrics(psnr: float, diff: float) -> dict:
    return {"psnr": psnr, "colorfulness_diff": diff}


def test_blessing_needs_gray_beaten_and_no_regression_beyond_tolerance():
    gray = _metrics(20.0, -30.0)
    t = Thresholds(min_psnr_gain_db=0.5, min_colorfulness_gain=0.0, min_colorfulness_recovered=0.0,
                   max_psnr_drop_db=0.1, max_colorfulness_drop=1.0)  # the old rule: no colorfulness_recovered check

    blessed, checks = evaluator.bless({"model": _metrics(21.0, -10.0), "gray": gray, "baseline": None}, t)
    assert blessed and [c["name"] for c in checks] == ["psnr_vs_gray", "colorfulness_vs_gray"]

    worse_than_last = {"model": _metrics(21.0, -10.0), "gray": gray, "baseline": _metrics(21.5, -10.0)}
    blessed, checks = evaluator.bless(worse_than_last, t)
    failed = [c for c in checks if not c["passed"]]
    assert not blessed and [c["name"] for c in failed] == ["psnr_vs_baseline"]
    assert "21.500" in failed[0]["detail"]

    within_tolerance = {"model": _metrics(21.45, -10.9), "gray": gray, "baseline": _metrics(21.5, -10.0)}
    assert evaluator.bless(within_tolerance, t)[0]

    too_small_gain = {"model": _metrics(20.4, -10.0), "gray": gray, "baseline": None}
    blessed, checks = evaluator.bless(too_small_gain, t)
    assert not blessed and [c["name"] for c in checks if not c["passed"]] == ["psnr_vs_gray"]

    over_saturated = {"model": _metrics(21.0, +31.0), "gray": gray, "baseline": _metrics(20.9, -12.0)}
    blessed, checks = evaluator.bless(over_saturated, t)
    assert not blessed
    assert [c["name"] for c in checks if not c["passed"]] == ["colorfulness_vs_gray", "colorfulness_vs_baseline"]


# ---------------------------------------------------------------- colour: rebalanced AuC, ratio, no sepia blessing


def _pythagorean_errors(shape) -> np.ndarray:
    """Per-pixel ab errors of exact lengths 0, 5, 10, 30, 40, 100 and 160 (past the sweep), cycling over pixels."""
    vectors = np.array([[0, 0], [3, 4], [-6, 8], [18, -24], [0, 40], [-100, 0], [96, 128]], np.float32)
    index = np.arange(np.prod(shape[:-1])).reshape(shape[:-1]) % len(vectors)
    return vectors[index]


def test_rebalanced_auc_matches_a_hand_computation_and_is_the_auc_with_unit_weights(examples):
    l, ab = _first_batch(examples)
    errors = _pythagorean_errors(ab.shape)
    predicted = ab + errors
    centres = colorbins.in_gamut_centres()
    weights = np.random.default_rng(7).uniform(0.2, 5.0, len(centres))
    acc = evaluator.MetricAccumulator(weight_table=evaluator.weight_table(centres, weights))
    acc.update(l, predicted, ab)
    m = acc.result()

    true_ab = ab.numpy().reshape(-1, 2)
    assert np.array_equal(true_ab, np.round(true_ab))  # the truth's ab are codes: its nearest bins are exact
    w = weights[colorbins.nearest_centre(true_ab, centres)]  # the TRUE ab's bin weights, not the prediction's
    distance = np.hypot(errors[..., 0], errors[..., 1]).reshape(-1)
    curve = np.array([(w * (distance <= t)).sum() / w.sum() for t in range(evaluator.AUC_MAX_THRESHOLD + 1)])
    assert m["auc_rebalanced"] == pytest.approx(curve.mean(), rel=1e-9)
    np.testing.assert_allclose(acc.rebalanced_auc_curve(), curve, rtol=1e-9)
    assert m["auc_rebalanced"] != pytest.approx(m["auc"], rel=1e-3)  # the weights matter

    ones = evaluator.MetricAccumulator(weight_table=evaluator.weight_table(centres, np.ones(len(centres))))
    ones.update(l, predicted, ab)
    unit = ones.result()
    assert unit["auc_rebalanced"] == pytest.approx(unit["auc"], rel=1e-12)
    plain = np.mean([(distance <= t).mean() for t in range(evaluator.AUC_MAX_THRESHOLD + 1)])
    assert unit["auc"] == pytest.approx(plain, rel=1e-9)

    no_prior = evaluator.MetricAccumulator()
    no_prior.update(l, predicted, ab)
    assert no_prior.result()["auc_rebalanced"] is None and no_prior.result()["auc"] == unit["auc"]


def test_rebalanced_auc_counts_a_rare_colour_as_much_as_the_common_ones(examples, prior_path):
    """Right on the dull pixels only: the plain AuC is high, the rebalanced one is pulled down by the rare ones."""
    l, ab = _first_batch(examples)
    prior = colorbins.ColorPrior.load(prior_path)
    chroma = np.hypot(ab[..., 0], ab[..., 1])
    dull = (chroma < 20.0)[..., None]
    predicted = tf.where(dull, ab, tf.zeros_like(ab))  # gray wherever the truth is saturated
    acc = evaluator.MetricAccumulator(weight_table=evaluator.weight_table(prior.centres, prior.weights))
    acc.update(l, predicted, ab)
    m = acc.result()
    assert 0.0 < m["auc_rebalanced"] < m["auc"] < 1.0


def test_colorfulness_ratio_is_one_for_the_truth_and_zero_for_gray(examples):
    l, ab = _first_batch(examples)
    truth, gray = evaluator.MetricAccumulator(), evaluator.MetricAccumulator(neutral=True)
    truth.update(l, ab, ab)
    gray.update(l, tf.zeros_like(ab), ab)
    assert truth.result()["colorfulness_ratio"] == 1.0
    assert gray.result()["colorfulness_ratio"] == 0.0
    flat = evaluator.MetricAccumulator()
    flat.update(l, tf.zeros_like(ab), tf.zeros_like(ab), evaluator.render(l, tf.zeros_like(ab), neutral=True))
    assert flat.result()["colorfulness_truth"] == 0.0  # a colourless truth: no ratio
    assert flat.result()["colorfulness_ratio"] is None


def _measured(examples, predict) -> dict:
    """metrics.json's model and gray for `predict(l, true_ab)` over the whole test split."""
    model, gray = evaluator.MetricAccumulator(), evaluator.MetricAccumulator(neutral=True)
    for l, ab in loader.make_dataset(examples, "test", image_size=SIZE, batch_size=8, training=False):
        true_ab = ab * loader.AB_SCALE
        model.update(l, predict(l, true_ab), true_ab)
        gray.update(l, tf.zeros_like(true_ab), true_ab)
    return {"model": model.result(), "gray": gray.result(), "baseline": None}


@pytest.mark.parametrize("name, predict", [
    ("sepia", lambda l, ab: tf.zeros_like(ab) + tf.constant(SEPIA)),
    ("quarter", lambda l, ab: ab * 0.25),
])
def test_a_sepia_or_washed_out_model_is_not_blessed_and_the_reason_names_the_colour(name, predict, examples):
    metrics = _measured(examples, predict)
    blessed, checks = evaluator.bless(metrics, Thresholds())
    failed = [c["name"] for c in checks if not c["passed"]]
    assert not blessed and "colorfulness_recovered" in failed, checks
    assert metrics["model"]["colorfulness_ratio"] < 0.5
    why = evaluator.reason(metrics, Thresholds(), checks)
    share = f"{metrics['model']['colorfulness_ratio']:.0%}"
    assert why.startswith("not blessed: ") and why.endswith(".") and "\n" not in why
    assert f"its colourfulness is {share} of the truth's (gray: 0%)" in why
    assert "must recover at least 50% of it" in why and "too dull (gray or sepia)" in why


def test_a_model_that_outputs_the_truth_is_blessed(examples):
    metrics = _measured(examples, lambda l, ab: ab)
    blessed, checks = evaluator.bless(metrics, Thresholds())
    assert blessed and [c["name"] for c in checks] == ["psnr_vs_gray", "colorfulness_vs_gray", "colorfulness_recovered"]
    assert metrics["model"]["colorfulness_ratio"] == 1.0
    why = evaluator.reason(metrics, Thresholds(), checks)
    assert why.startswith("blessed: PSNR 100.0 dB (gray ") and "at most 1 dB below allowed" in why
    assert why.endswith("colourfulness 100% of the truth's.")


def test_an_oversaturated_model_is_not_blessed_either():
    gray = {"psnr": 22.0, "colorfulness": 0.0, "colorfulness_truth": 40.0, "colorfulness_diff": -40.0}
    model = {"psnr": 21.5, "colorfulness": 64.0, "colorfulness_truth": 40.0, "colorfulness_diff": 24.0}
    metrics = {"model": model, "gray": gray, "baseline": None}
    blessed, checks = evaluator.bless(metrics, Thresholds())
    assert not blessed and [c["name"] for c in checks if not c["passed"]] == ["colorfulness_recovered"]
    assert evaluator.reason(metrics, Thresholds(), checks) == (
        "not blessed: its colourfulness is 160% of the truth's (gray: 0%), more than the 150% allowed: "
        "the colour is over-saturated.")
    a_little_dark = {**model, "psnr": 20.5, "colorfulness": 44.0, "colorfulness_diff": 4.0}
    blessed, checks = evaluator.bless({**metrics, "model": a_little_dark}, Thresholds())
    assert not blessed and [c["name"] for c in checks if not c["passed"]] == ["psnr_vs_gray"]
    assert evaluator.reason({**metrics, "model": a_little_dark}, Thresholds(), checks) == (
        "not blessed: its PSNR 20.5 dB is 1.50 dB below gray's 22.0 dB, more than the 1 dB allowed: "
        "its colours are more often wrong than right.")
    off = Thresholds(min_psnr_gain_db=-100, min_colorfulness_gain=-1000, min_colorfulness_recovered=0)
    blessed, checks = evaluator.bless(metrics, off)  # every colour and PSNR check off in effect
    assert blessed and "colorfulness_recovered" not in [c["name"] for c in checks]


def test_evaluating_a_sepia_keras_model_writes_not_blessed_with_the_reason(examples, prior_path, tmp_path, capsys):
    """A model that paints one brownish cast everywhere (a zero kernel and the sepia bias), through the CLI."""
    inputs = keras.Input((SIZE, SIZE, 1))
    sepia = keras.layers.Conv2D(2, 1, kernel_initializer="zeros",
                                bias_initializer=keras.initializers.Constant(np.array(SEPIA) / loader.AB_SCALE))
    keras.Model(inputs, sepia(inputs)).save(str(tmp_path / "sepia.keras"))
    out = tmp_path / "eval"
    code = evaluator.main(["--model", str(tmp_path / "sepia.keras"), "--examples", examples, "--output_dir", str(out),
                           "--prior", prior_path])
    printed = capsys.readouterr().out
    assert code == 0 and (out / "NOT_BLESSED").is_file() and not (out / "BLESSED").exists()
    blessing = json.loads((out / "blessing.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert not blessing["blessed"] and "colorfulness_recovered" in [c["name"] for c in blessing["checks"] if not c["passed"]]
    assert "colourfulness" in blessing["reason"] and "too dull (gray or sepia)" in blessing["reason"]
    assert f"evaluator: {blessing['reason']}" in printed.splitlines()
    assert metrics["model"]["colorfulness_ratio"] < 0.5 and metrics["gray"]["colorfulness_ratio"] == 0.0
    assert 0.0 < metrics["model"]["auc_rebalanced"] < 1.0 and metrics["prior"] == prior_path
    assert "rebalanced 0." in printed and "ratio 0." in printed


# ---------------------------------------------------------------- full runs


def test_writes_contract_files_and_consistent_blessing(evaluated, models_dir):
    out = os.path.dirname(evaluated.metrics_path)
    with open(evaluated.metrics_path) as f:
        metrics = json.load(f)
    assert metrics["split"] == "test" and metrics["images"] == 3 and metrics["image_size"] == SIZE
    assert metrics["model_path"] == models_dir["keras"] and metrics["baseline_model"] == models_dir["same"]
    for name in ("model", "gray", "baseline"):
        assert set(metrics[name]) == METRIC_KEYS
    assert metrics["gray"]["colorfulness"] == 0.0
    assert metrics["gray"]["colorfulness_truth"] == metrics["model"]["colorfulness_truth"] > 0

    with open(evaluated.blessing_path) as f:
        blessing = json.load(f)
    blessed, checks = evaluator.bless(metrics, Thresholds())
    assert blessing["blessed"] == evaluated.blessed == blessed
    assert blessing["checks"] == checks and len(checks) == 5  # colorfulness_recovered joined the four checks
    assert blessing["reason"] == evaluated.reason == evaluator.reason(metrics, Thresholds(), checks)
    assert blessing["reason"].startswith("blessed: " if blessed else "not blessed: ")
    assert metrics["prior"] == evaluated.metrics["prior"] and metrics["model"]["auc_rebalanced"] is not None
    assert blessing["thresholds"]["max_psnr_drop_db"] == Thresholds().max_psnr_drop_db
    marker = "BLESSED" if blessed else "NOT_BLESSED"
    assert os.path.isfile(os.path.join(out, marker))
    assert not os.path.exists(os.path.join(out, "NOT_BLESSED" if blessed else "BLESSED"))


def test_savedmodel_baseline_with_the_same_weights_scores_the_same(evaluated):
    model, baseline = evaluated.metrics["model"], evaluated.metrics["baseline"]
    for key in METRIC_KEYS:
        assert baseline[key] == pytest.approx(model[key], rel=1e-3, abs=1e-3), key
    checks = {c["name"]: c["passed"] for c in json.load(open(evaluated.blessing_path))["checks"]}
    assert checks["psnr_vs_baseline"] and checks["colorfulness_vs_baseline"]


def test_grid_has_a_gray_predicted_truth_row_per_image(evaluated, examples, models_dir):
    grid = np.asarray(Image.open(evaluated.grid_path))
    assert grid.shape == (3 * SIZE, 3 * SIZE, 3)
    gray, predicted, truth = grid[:, :SIZE], grid[:, SIZE : 2 * SIZE], grid[:, 2 * SIZE :]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    l, ab = _first_batch(examples)
    np.testing.assert_array_equal(truth, evaluator.render(l, ab).numpy().reshape(3 * SIZE, SIZE, 3))
    model = keras.models.load_model(models_dir["keras"], compile=False)
    expected = evaluator.render(l, model(l) * loader.AB_SCALE).numpy().reshape(3 * SIZE, SIZE, 3)
    assert np.abs(predicted.astype(int) - expected).max() <= 1


def test_fifty_rows_make_a_grid_of_five_columns_of_ten():
    rows = [np.full((4, 12, 3), i, np.uint8) for i in range(23)]  # 4 x 12: a 4-pixel gray | predicted | truth row
    laid = evaluator.grid(rows)
    assert laid.shape == (10 * 4, 3 * 12, 3)  # three columns of ten rows, the last holding three
    assert (laid[4:8, :12] == 1).all() and (laid[0:4, 12:24] == 10).all() and (laid[8:12, 24:] == 22).all()
    assert (laid[12:, 24:] == 255).all()  # past the last image: white
    assert evaluator.grid(rows * 3)[:, :, 0].shape == (40, 12 * 7)  # 69 rows: seven columns


def test_historical_photos_keep_their_resolution(evaluated):
    names = sorted(os.path.basename(p) for p in evaluated.historical)
    assert names == sorted(f"{stem}.png" for stem in HISTORICAL)  # the corrupt file is skipped
    for path in evaluated.historical:
        (width, height), _, _ = HISTORICAL[os.path.basename(path)[:-4]]
        with Image.open(path) as image:
            assert image.size == (width, height) and image.mode == "RGB"


def test_metrics_do_not_depend_on_batching_and_max_images_caps(examples, models_dir, prior_path, tmp_path):
    (tmp_path / "serving" / "colorizer" / ".tmp-1-4242").mkdir(parents=True)  # a push that never published
    results = [
        evaluator.evaluate(EvalConfig(
            model=models_dir["keras"], examples=examples, output_dir=str(tmp_path / str(batch)), batch_size=batch,
            max_images=2, grid_images=1, baseline_model=str(tmp_path / "serving" / "colorizer"),
            baseline_optional=True,  # no version published there yet: gray is the only baseline
            prior=prior_path,
        ))
        for batch in (1, 3)
    ]
    one, three = (r.metrics for r in results)
    assert one["images"] == three["images"] == 2 and one["baseline"] is None
    for name in ("model", "gray"):
        for key in METRIC_KEYS:
            assert one[name][key] == pytest.approx(three[name][key], rel=1e-5, abs=1e-6), (name, key)
    assert np.asarray(Image.open(results[0].grid_path)).shape == (SIZE, 3 * SIZE, 3)
    assert results[0].historical == []


def test_cli_with_a_baseline_of_another_size(examples, models_dir, tmp_path):
    """The 16px SavedModel baseline runs on L resized to 16 and its ab resized back to 32."""
    out = tmp_path / "cli"
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "components.evaluator", "--model", models_dir["keras"], "--examples", examples,
         "--output_dir", str(out), "--baseline_model", os.path.dirname(models_dir["small"]),
         "--min_psnr_gain_db", "1000"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "NOT BLESSED (failed: psnr_vs_gray" in proc.stdout
    assert "evaluator: not blessed: its PSNR" in proc.stdout and "rebalanced n/a" in proc.stdout
    assert str(out / "metrics.json") in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline"] is not None and metrics["baseline"]["psnr"] != metrics["model"]["psnr"]
    assert (out / "NOT_BLESSED").is_file()


# ---------------------------------------------------------------- user errors


def _bad_keras_model(path: str, shape: tuple[int, int, int]) -> str:
    inputs = keras.Input(shape)
    keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs)).save(path)
    return path


def _empty_test_split(root) -> str:
    folder = root / "empty" / "examples" / "test"
    folder.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(folder / "data-00000-of-00001.tfrecord.gz"), options="GZIP"):
        pass
    return str(root / "empty")


@pytest.mark.parametrize("case, words", [
    ("missing_model", "does not exist"),
    ("not_a_model", "could not be loaded as a Keras model"),
    ("no_split", "no TFRecord files match"),
    ("empty_split", "holds a record"),
    ("rectangular_baseline", "not [batch, S, S, 1]"),
    ("baseline_without_signature", "no 'predict_ab' signature"),
    ("missing_historical", "historical dir"),
    ("missing_prior", "prior.json does not exist"),
    ("bad_prior", "could not be read as a colour prior"),
])
def test_cli_user_errors_exit_2_with_one_sentence(case, words, examples, models_dir, tmp_path, capsys):
    args = {"--model": models_dir["keras"], "--examples": examples, "--output_dir": str(tmp_path / "out")}
    if case == "missing_model":
        args["--model"] = str(tmp_path / "nope.keras")
    elif case == "not_a_model":
        (tmp_path / "model.keras").write_text("not a model")
        args["--model"] = str(tmp_path / "model.keras")
    elif case == "no_split":
        args["--split"] = "validation"
    elif case == "empty_split":
        args["--examples"] = _empty_test_split(tmp_path)
    elif case == "rectangular_baseline":
        args["--baseline_model"] = _bad_keras_model(str(tmp_path / "wide.keras"), (SIZE, 48, 1))
    elif case == "baseline_without_signature":
        module = tf.Module()
        module.f = tf.function(lambda x: x, input_signature=[tf.TensorSpec([None], tf.float32)])
        tf.saved_model.save(module, str(tmp_path / "other"), signatures={"serving_default": module.f})
        args["--baseline_model"] = str(tmp_path / "other")
    elif case == "missing_historical":
        args["--historical_dir"] = str(tmp_path / "no_photos")
    elif case == "missing_prior":
        args["--prior"] = str(tmp_path / "prior.json")
    elif case == "bad_prior":
        (tmp_path / "prior.json").write_text('{"version": 1, "centres": [[0, 0]]}')
        args["--prior"] = str(tmp_path / "prior.json")
    code = evaluator.main([item for pair in args.items() for item in pair])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("evaluator: ") and words in err and "\n" not in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out" / "metrics.json")
