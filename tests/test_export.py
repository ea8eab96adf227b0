"""Serving SavedModel: round trip against the in-memory model and a numpy/Pillow reference, saved_model_cli, errors."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import color as skcolor

from components import color, export, models, synthetic

SIZE = 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _encode(pixels: np.ndarray, fmt: str, mode: str = "RGB", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _animated_gif(first: np.ndarray, second: np.ndarray) -> bytes:
    buf = io.BytesIO()
    frames = [Image.fromarray(f).convert("P") for f in (first, second)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height, with no pixel data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0"


def _jpeg_claiming(data: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


@pytest.fixture(scope="module")
def model() -> keras.Model:
    """A tiny random Model 1 whose output layer is scaled up, so its ab is strong and varies over the image."""
    keras.utils.set_random_seed(0)
    net = models.build_model1(SIZE, width=0.25)
    layer = net.get_layer("ab_conv")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 5.0, bias])
    return net


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> str:
    """The model saved as .keras and exported from that path, with the sample images as warmup."""
    root = tmp_path_factory.mktemp("export")
    path = str(root / "model.keras")
    model.save(path)
    export_dir = str(root / "serving")
    export.export_serving_model(path, export_dir, warmup=export.sample_images())
    return export_dir


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported)


def _reference(model: keras.Model, data: bytes) -> np.ndarray:
    """The serving pipeline in numpy, Pillow and scikit-image: uint8 RGB at the input's size."""
    with Image.open(io.BytesIO(data)) as image:
        image.seek(0)
        rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    l = skcolor.rgb2lab(rgb)[..., 0].astype(np.float32)
    l_small = np.asarray(Image.fromarray(l, "F").resize((SIZE, SIZE), Image.BILINEAR))
    ab = model(l_small[None, :, :, None]).numpy()[0] * 128.0
    ab_full = np.stack(
        [np.asarray(Image.fromarray(ab[..., c], "F").resize((width, height), Image.BILINEAR)) for c in range(2)],
        axis=-1,
    )
    with np.errstate(all="ignore"):
        out = skcolor.lab2rgb(np.concatenate([l[..., None], ab_full], axis=-1))
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def test_predict_ab_matches_the_keras_model(loaded, model):
    l = np.random.default_rng(0).uniform(0.0, 100.0, (3, SIZE, SIZE, 1)).astype(np.float32)
    ab = loaded.signatures[export.PREDICT_AB_SIGNATURE](l=tf.constant(l))[export.AB_OUTPUT].numpy()
    np.testing.assert_allclose(ab, model(l).numpy() * 128.0, rtol=1e-5, atol=1e-3)
    assert np.abs(ab).max() > 50.0  # LAB units, not ab/128


@pytest.mark.filterwarnings("ignore:Conversion from CIE-LAB")
def test_serving_default_colorizes_every_format_at_its_own_size(loaded, model):
    rng = np.random.default_rng(1)
    gif_first, gif_second = synthetic.render_scene(rng, 40, 70), synthetic.render_scene(rng, 40, 70)
    requests = {
        "colour JPEG 250x250": _encode(synthetic.render_scene(rng, 250, 250), "JPEG", quality=90),
        "gray PNG 97x61": _encode(synthetic.render_scene(rng, 61, 97), "PNG", "L"),
        "animated GIF 70x40": _animated_gif(gif_first, gif_second),
        "BMP 45x33": _encode(synthetic.render_scene(rng, 33, 45), "BMP"),
        "gray JPEG 300x200": _encode(synthetic.render_scene(rng, 200, 300), "JPEG", "L"),
    }
    out = loaded.signatures[export.SERVING_SIGNATURE](image_bytes=tf.constant(list(requests.values())))
    answers = out[export.COLORIZED_BYTES].numpy()
    assert len(answers) == len(requests)
    for (name, data), answer in zip(requests.items(), answers):
        with Image.open(io.BytesIO(answer)) as image:
            assert image.format == "PNG" and image.mode == "RGB", name
            got = np.asarray(image)
        expected = _reference(model, data)
        assert got.shape == expected.shape, name
        diff = np.abs(got.astype(np.int16) - expected)
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 3, (name, diff.mean(), np.percentile(diff, 99))
        gray = np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.int16)
        assert np.abs(got - gray[..., None]).mean() > 10.0, f"{name} came back without colour"


def test_the_evaluators_recipe_is_the_serving_graphs(loaded):
    """color.colorize (the evaluator's historical photos) and serving_default share one recipe: the same pixels."""
    rgb = synthetic.render_scene(np.random.default_rng(2), 61, 97)
    out = loaded.signatures[export.SERVING_SIGNATURE](image_bytes=tf.constant([_encode(rgb, "PNG")]))
    served = np.asarray(Image.open(io.BytesIO(out[export.COLORIZED_BYTES].numpy()[0])))
    predict_ab = loaded.signatures[export.PREDICT_AB_SIGNATURE]
    local = color.colorize(rgb, lambda l: predict_ab(l=l)[export.AB_OUTPUT], SIZE).numpy()
    assert local.shape == served.shape == (61, 97, 3)
    diff = np.abs(local.astype(np.int16) - served)
    assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_an_empty_batch_returns_an_empty_batch(loaded):
    out = loaded.signatures[export.SERVING_SIGNATURE](image_bytes=tf.constant([], tf.string))
    assert out[export.COLORIZED_BYTES].shape == (0,)


@pytest.mark.parametrize(
    "make_bad, sentence",
    [
        (lambda jpeg: b"", "image_bytes[1] is empty; send the bytes of a JPEG, PNG, GIF or BMP file."),
        (lambda jpeg: b"name,colour\nsky,blue\n", "image_bytes[1] is not a JPEG, PNG, GIF or BMP image"),
        (lambda jpeg: _png_header(10000, 6000),
         "image_bytes[1] is 10000x6000 = 60000000 pixels, over the limit of 50000000; send a smaller image."),
        (lambda jpeg: _jpeg_claiming(jpeg, 9000, 9000), "image_bytes[1] is 9000x9000 = 81000000 pixels"),
    ],
    ids=["empty", "not-an-image", "png-over-limit", "jpeg-over-limit"],
)
def test_a_bad_request_fails_with_one_sentence(loaded, make_bad, sentence):
    good = export.sample_images()[0]
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        loaded.signatures[export.SERVING_SIGNATURE](image_bytes=tf.constant([good, make_bad(good)]))
    assert sentence in caught.value.message


def test_the_pixel_limit_is_read_from_the_header_and_48_megapixels_pass(loaded):
    # Only a header: passing the limit leads to the decoder, which then finds no pixel data.
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        loaded.signatures[export.SERVING_SIGNATURE](image_bytes=tf.constant([_png_header(8000, 6000)]))
    assert "over the limit" not in caught.value.message


def test_warmup_requests_hold_the_sample_images(exported):
    samples = export.sample_images()
    sizes = []
    for data in samples:
        with Image.open(io.BytesIO(data)) as image:
            sizes.append((image.format, image.mode, image.size))
    assert sizes[:2] == [("JPEG", "RGB", (250, 250)), ("PNG", "L", (97, 61))]
    logs = export.read_warmup(exported)
    assert len(logs) == len(samples)
    for log, data in zip(logs, samples):
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        assert list(tf.make_ndarray(request.inputs["image_bytes"])) == [data]


def _saved_model_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_saved_model_cli_shows_and_runs_it(exported, tmp_path):
    shown = _saved_model_cli("show", "--dir", exported, "--tag_set", "serve", "--signature_def", "serving_default")
    assert shown.returncode == 0, shown.stderr[-2000:]
    for text in ("inputs['image_bytes']", "DT_STRING", "outputs['colorized_bytes']", "shape: (-1)"):
        assert text in shown.stdout

    images = export.sample_images()
    request = tmp_path / "request.npy"
    np.save(request, np.array(images, dtype=object))
    ran = _saved_model_cli("run", "--dir", exported, "--tag_set", "serve", "--signature_def", "serving_default",
                           "--inputs", f"image_bytes={request}", "--outdir", str(tmp_path / "out"))
    assert ran.returncode == 0, ran.stderr[-2000:]
    answers = np.load(tmp_path / "out" / "colorized_bytes.npy", allow_pickle=True)
    for data, answer in zip(images, answers, strict=True):
        with Image.open(io.BytesIO(data)) as sent, Image.open(io.BytesIO(answer)) as got:
            assert (got.format, got.size) == ("PNG", sent.size)


def test_export_refuses_what_it_cannot_serve(model, exported, tmp_path, capsys):
    with pytest.raises(export.ExportError, match="is not empty; pass a new directory"):
        export.export_serving_model(model, exported)
    rgb_in = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(2, 3, padding="same")])
    with pytest.raises(export.ExportError, match=r"needs one L input \[None, S, S, 1\]"):
        export.export_serving_model(rgb_in, str(tmp_path / "rgb"))
    assert export.main(["--model", str(tmp_path / "missing.keras"), "--export_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "missing.keras does not exist" in err and "Traceback" not in err


def test_a_classification_model_exports_and_serves_like_the_keras_model(tmp_path):
    """The classification head (logits -> annealed mean -> ab/128) keeps the model's contract: the same export."""
    keras.utils.set_random_seed(1)
    net = models.build_model1(SIZE, width=0.25, head="classification", temperature=0.3)
    layer = net.get_layer(models.LOGITS_LAYER)
    kernel, bias = layer.get_weights()
    rng = np.random.default_rng(7)
    layer.set_weights([rng.normal(0.0, 5.0, kernel.shape), bias])  # confident logits: strong ab that varies
    path = str(tmp_path / "model.keras")
    net.save(path)
    export.export_serving_model(path, str(tmp_path / "serving"))
    served = tf.saved_model.load(str(tmp_path / "serving"))

    l = np.random.default_rng(5).uniform(0.0, 100.0, (3, SIZE, SIZE, 1)).astype(np.float32)
    ab = served.signatures[export.PREDICT_AB_SIGNATURE](l=tf.constant(l))[export.AB_OUTPUT].numpy()
    np.testing.assert_allclose(ab, net(l).numpy() * 128.0, rtol=1e-5, atol=1e-3)
    assert np.abs(ab).max() > 40.0 and ab.std(axis=(1, 2)).mean() > 5.0  # strong, and varies over the image

    rgb = synthetic.render_scene(np.random.default_rng(6), 61, 97)
    out = served.signatures[export.SERVING_SIGNATURE](image_bytes=tf.constant([_encode(rgb, "PNG")]))
    got = np.asarray(Image.open(io.BytesIO(out[export.COLORIZED_BYTES].numpy()[0])))
    local = color.colorize(rgb, lambda x: net(x) * 128.0, SIZE).numpy()
    assert got.shape == local.shape == (61, 97, 3)
    diff = np.abs(local.astype(np.int16) - got)
    assert diff.max() <= 1, (diff.max(), diff.mean())
    assert np.abs(got.astype(np.int16) - np.asarray(Image.fromarray(rgb).convert("L"), np.int16)[..., None]).mean() > 5

    # a fresh process (the export CLI, as a Kubeflow step or a user runs it) loads the head's custom layer too
    result = subprocess.run([sys.executable, "-m", "components.export", "--model", path, "--export_dir",
                             str(tmp_path / "cli"), "--no_warmup"], capture_output=True, text=True, timeout=300,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    again = tf.saved_model.load(str(tmp_path / "cli")).signatures[export.PREDICT_AB_SIGNATURE](l=tf.constant(l))
    np.testing.assert_allclose(again[export.AB_OUTPUT].numpy(), ab, rtol=1e-5, atol=1e-3)


_MEMORY_PROBE = """
import io, sys, threading, time
import numpy as np, tensorflow as tf
from PIL import Image

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
side_w, side_h = int(sys.argv[2]), int(sys.argv[3])
pixels = np.zeros((side_h, side_w), np.uint8)
pixels[: side_h // 100] = np.random.default_rng(0).integers(0, 255, (side_h // 100, side_w), dtype=np.uint8)
buf = io.BytesIO()
Image.fromarray(pixels).save(buf, "PNG")
data = tf.constant([buf.getvalue()])
small = io.BytesIO()
Image.fromarray(pixels[:50, :80]).save(small, "PNG")
serve(image_bytes=tf.constant([small.getvalue()]))  # graph warm, its buffers allocated
peak, done = [rss()], [False]
base = peak[0]

def sample():
    while not done[0]:
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)

thread = threading.Thread(target=sample)
thread.start()
out = serve(image_bytes=data)["colorized_bytes"].numpy()[0]
done[0] = True
thread.join()
assert Image.open(io.BytesIO(out)).size == (side_w, side_h)
print((peak[0] - base) / (side_w * side_h))
"""


def test_a_large_image_costs_a_few_bytes_per_pixel_not_float_copies_of_it(exported):
    """A 12-megapixel photo through serving_default: memory beyond the model stays near its uint8 buffers.

    Done at once, the full-resolution colour conversions held several float copies of the image (51 bytes per
    pixel measured at 49 MP, 4.2 GB in the server); the strips of components.color keep it about 13 at
    12 MP and 8 at 49 MP.
    """
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, exported, "4000", "3000"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    bytes_per_pixel = float(result.stdout.split()[-1])
    assert bytes_per_pixel < 25.0, bytes_per_pixel
