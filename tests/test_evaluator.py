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

from components import color, evaluator, loader, models
from components.evaluator import EvalConfig, Thresholds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
METRIC_KEYS = {
    "psnr", "ssim", "ab_mse", "colorfulness", "colorfulness_truth", "colorfulness_diff", "colorfulness_abs",
    "colorfulness_abs_truth", "colorfulness_abs_diff", "auc",
}
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
def evaluated(examples, models_dir, historical_dir, tmp_path_factory):
    """One full evaluation: batches of 2, the same-weights SavedModel as baseline, historical photos."""
    out = str(tmp_path_factory.mktemp("eval"))
    config = EvalConfig(
        model=models_dir["keras"], examples=examples, output_dir=out, baseline_model=models_dir["same"],
        batch_size=2, historical_dir=historical_dir,
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
    t = Thresholds(min_psnr_gain_db=0.5, max_psnr_drop_db=0.1, max_colorfulness_drop=1.0)

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
    assert blessing["checks"] == checks and len(checks) == 4
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


def test_metrics_do_not_depend_on_batching_and_max_images_caps(examples, models_dir, tmp_path):
    (tmp_path / "serving" / "colorizer" / ".tmp-1-4242").mkdir(parents=True)  # a push that never published
    results = [
        evaluator.evaluate(EvalConfig(
            model=models_dir["keras"], examples=examples, output_dir=str(tmp_path / str(batch)), batch_size=batch,
            max_images=2, grid_images=1, baseline_model=str(tmp_path / "serving" / "colorizer"),
            baseline_optional=True,  # no version published there yet: gray is the only baseline
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
    code = evaluator.main([item for pair in args.items() for item in pair])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("evaluator: ") and words in err and "\n" not in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out" / "metrics.json")
