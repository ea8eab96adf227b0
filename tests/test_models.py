"""The report's two autoencoders: parameter counts, the L -> ab contract, variants, backbone weights, saving."""

from __future__ import annotations

import os
import socket
import time

import keras
import numpy as np
import pytest

from components import models


def _l(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 100.0, (batch, size, size, 1)).astype(np.float32)


def _classifier(backbone_model: keras.Model) -> keras.Model:
    return next(layer for layer in backbone_model.layers if isinstance(layer, keras.Model))


@pytest.fixture(scope="module")
def report_model2() -> models.Model2Parts:
    """The report's Model 2 at 224 with a random InceptionResNetV2: heavy, so built once."""
    return models.build_model2_parts(224)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the code under test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _offline_get_file(fname, origin, *args, **kwargs):
    """keras.utils.get_file on a machine without network: Keras raises a plain Exception."""
    raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")


@pytest.fixture
def offline(monkeypatch):
    """Fetching ImageNet weights through Keras fails at once, as it does without network."""
    monkeypatch.setattr(keras.utils, "get_file", _offline_get_file)


@pytest.fixture
def mixed_bfloat16():
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_report_parameter_counts(report_model2):
    assert models.trainable_parameters(models.build_model1(224)) == 4_756_770
    assert models.trainable_parameters(report_model2.end_to_end) == 7_075_922
    assert models.trainable_parameters(report_model2.head) == 7_075_922
    assert models.trainable_parameters(report_model2.backbone) == 0
    assert report_model2.backbone.non_trainable_weights


def _small_model(family: str, size: int) -> keras.Model:
    return models.build_model(family, size, backbone="mobilenet_v2")


@pytest.mark.parametrize("family", models.FAMILIES)
@pytest.mark.parametrize("size", [64, 96])
def test_l_in_ab_out(family, size):
    model = _small_model(family, size)
    assert [t.name for t in model.inputs] == ["l"]
    ab = keras.ops.convert_to_numpy(model(_l(size)))
    assert ab.shape == (2, size, size, 2) and ab.dtype == np.float32
    assert np.all(np.abs(ab) <= 1.0)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: models.build_model1(100), "multiple of 8"),
        (lambda: models.build_model2_parts(100, backbone="mobilenet_v2"), "multiple of 8"),
        (lambda: models.build_model1(64, width=0), "width must be a positive"),
        (lambda: models.build_model("model3", 64), "Unknown model family 'model3'"),
        (lambda: models.build_model2(64, backbone="resnet50"), "Unknown backbone 'resnet50'"),
        (lambda: models.compile_model(models.build_model1(64, width=0.1), loss="mae"), "Unknown loss 'mae'"),
    ],
)
def test_bad_arguments_refused_with_a_sentence(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_half_width_about_quarters_model1():
    full = models.trainable_parameters(models.build_model1(64))
    half = models.trainable_parameters(models.build_model1(64, width=0.5))
    assert 0.2 < half / full < 0.3


@pytest.mark.parametrize("loss", models.LOSSES)
def test_compiled_loss_is_the_one_asked_for(loss):
    model = models.compile_model(models.build_model1(64, width=0.25), loss=loss)
    model.run_eagerly = True
    target = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 64, 64, 2)).astype(np.float32)
    error = np.abs(keras.ops.convert_to_numpy(model(_l(64))) - target)
    delta = models.HUBER_DELTA
    huber = np.where(error <= delta, 0.5 * error**2, delta * (error - 0.5 * delta))
    expected = np.mean(error**2) if loss == "mse" else np.mean(huber)
    reported = model.train_on_batch(_l(64), target, return_dict=True)["loss"]
    np.testing.assert_allclose(reported, expected, rtol=1e-4)


@pytest.mark.parametrize("backbone", models.BACKBONES)
def test_missing_imagenet_weights_offline_are_refused(backbone, monkeypatch, tmp_path, offline, no_network):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(models.MissingWeightsError, match=rf"{tmp_path}/models.*--backbone_weights"):
        models.build_model2_parts(64, backbone=backbone, weights="imagenet")


def test_missing_imagenet_weights_are_fetched_through_keras(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    served = keras.applications.MobileNetV2(weights=None)
    name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    calls = []

    def get_file(fname, origin, file_hash=None, cache_subdir="datasets", cache_dir=None, **kwargs):
        calls.append((fname, origin, socket.getdefaulttimeout()))
        path = os.path.join(cache_dir, cache_subdir, fname)
        served.save(path)  # what the download leaves in the Keras cache
        return path

    monkeypatch.setattr(keras.utils, "get_file", get_file)
    before = socket.getdefaulttimeout()
    path = models.resolve_backbone_weights("mobilenet_v2", "imagenet")
    assert path == str(tmp_path / "keras_home" / "models" / name)
    url = f"https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/{name}"
    assert calls == [(name, url, models.FETCH_TIMEOUT_S)]
    assert socket.getdefaulttimeout() == before
    parts = models.build_model2_parts(64, backbone="mobilenet_v2", weights="imagenet")
    assert len(calls) == 1  # now read from the cache
    for loaded, expected in zip(_classifier(parts.backbone).get_weights(), served.get_weights()):
        np.testing.assert_array_equal(loaded, expected)


def test_offline_imagenet_is_one_sentence_and_random_only_when_asked(monkeypatch, tmp_path, offline, no_network):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(models.MissingWeightsError) as info:
        models.resolve_backbone_weights("mobilenet_v2", "imagenet")
    message = str(info.value)
    assert message.startswith(
        "ImageNet weights for mobilenet_v2 are not in the Keras cache and could not be downloaded"
    )
    assert f"put mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5 in {tmp_path}/models/" in message
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")
    assert models.resolve_backbone_weights("mobilenet_v2", "imagenet", allow_random_backbone=True) is None
    assert time.monotonic() - start < 5
    for random in ("none", "None", "NONE", None):
        assert models.resolve_backbone_weights("mobilenet_v2", random) is None
    with pytest.raises(ValueError, match="imagenet, none or a .h5"):
        models.resolve_backbone_weights("mobilenet_v2", "resnet")


def test_imagenet_weights_come_from_the_keras_cache(monkeypatch, tmp_path, no_network):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cached = keras.applications.MobileNetV2(weights=None)
    (tmp_path / "models").mkdir()
    cached.save(str(tmp_path / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"))
    parts = models.build_model2_parts(64, backbone="mobilenet_v2", weights="imagenet")
    for loaded, expected in zip(_classifier(parts.backbone).get_weights(), cached.get_weights()):
        np.testing.assert_array_equal(loaded, expected)


def test_local_weights_file(tmp_path):
    saved = keras.applications.MobileNetV2(weights=None)
    path = str(tmp_path / "mobilenet.weights.h5")
    saved.save_weights(path)
    parts = models.build_model2_parts(64, backbone="mobilenet_v2", weights=path)
    for loaded, expected in zip(_classifier(parts.backbone).get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(loaded, expected)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.build_model2_parts(64, backbone="mobilenet_v2", weights=str(tmp_path / "absent.h5"))


def test_report_model2_runs_end_to_end_from_l_alone(report_model2):
    ab = keras.ops.convert_to_numpy(report_model2.end_to_end(_l(224, batch=1)))
    assert ab.shape == (1, 224, 224, 2) and np.all(np.abs(ab) <= 1.0)


def test_head_on_stored_embeddings_trains_the_end_to_end_model():
    end_to_end, backbone, head = models.build_model2_parts(64, backbone="mobilenet_v2")
    l = _l(64)
    embedding = keras.ops.convert_to_numpy(backbone(l))
    assert embedding.shape == (2, models.EMBEDDING_SIZE)
    np.testing.assert_allclose(embedding.sum(axis=1), 1.0, rtol=1e-4)
    before = keras.ops.convert_to_numpy(end_to_end(l))
    np.testing.assert_allclose(before, keras.ops.convert_to_numpy(head({"l": l, "embedding": embedding})), atol=1e-6)

    models.compile_model(head, learning_rate=1e-2)
    head.run_eagerly = True
    target = np.random.default_rng(2).uniform(-0.5, 0.5, (2, 64, 64, 2)).astype(np.float32)
    head.train_on_batch({"l": l, "embedding": embedding}, target)

    after = keras.ops.convert_to_numpy(end_to_end(l))
    assert np.abs(after - before).max() > 1e-4
    np.testing.assert_allclose(after, keras.ops.convert_to_numpy(head({"l": l, "embedding": embedding})), atol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(backbone(l)), embedding)


@pytest.mark.parametrize("family", models.FAMILIES)
def test_keras_file_round_trip(family, tmp_path):
    model = _small_model(family, 64)
    path = str(tmp_path / f"{family}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    l = _l(64)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(l)), keras.ops.convert_to_numpy(model(l)))


@pytest.mark.parametrize("family", models.FAMILIES)
def test_mixed_precision_model_outputs_float32(family, mixed_bfloat16):
    model = _small_model(family, 64)
    convs = model if family == "model1" else model.get_layer("model2_head")
    assert convs.get_layer("encoder_conv1").compute_dtype == "bfloat16"
    ab = keras.ops.convert_to_numpy(model(_l(64)))
    assert ab.dtype == np.float32 and ab.shape == (2, 64, 64, 2)


def test_mixed_precision_model_trains(mixed_bfloat16):
    model = models.compile_model(models.build_model1(64, width=0.25))
    target = np.zeros((2, 64, 64, 2), np.float32)
    assert np.isfinite(model.train_on_batch(_l(64), target, return_dict=True)["loss"])


# ---------------------------------------------------------------- the classification head


@pytest.fixture(scope="module")
def uniform_prior():
    """A prior from a flat ab histogram: every code counted once."""
    from components import colorbins

    return colorbins.ColorPrior.from_counts(np.ones((256, 256)))


def _classifier_model(family: str, size: int = 32, **kwargs) -> keras.Model:
    return models.build_model(family, size, width=0.25, backbone="mobilenet_v2", head="classification", **kwargs)


@pytest.mark.parametrize("family", models.FAMILIES)
def test_classification_head_outputs_ab_and_shares_weights_with_its_logits(family, uniform_prior):
    from components import colorbins

    model = _classifier_model(family)
    logits = models.logits_model(model)
    q = len(colorbins.in_gamut_centres())
    assert models.head_of(model) == "classification" and q == 309
    assert [t.name for t in model.inputs] == ["l"] and [t.name for t in logits.inputs] == ["l"]
    l = _l(32)
    ab = keras.ops.convert_to_numpy(model(l))
    z = keras.ops.convert_to_numpy(logits(l))
    assert ab.shape == (2, 32, 32, 2) and ab.dtype == np.float32
    assert z.shape == (2, 16, 16, q) and z.dtype == np.float32
    assert np.abs(ab).max() <= np.abs(colorbins.in_gamut_centres()).max() / 128.0 + 1e-6
    # the model's ab is the annealed mean of its logits, upsampled by 2 (nearest)
    decoded = keras.ops.convert_to_numpy(colorbins.annealed_mean(z, colorbins.in_gamut_centres(), 0.38)) / 128.0
    np.testing.assert_allclose(ab, decoded.repeat(2, axis=1).repeat(2, axis=2), atol=1e-5)
    assert [id(w) for w in logits.trainable_weights] == [id(w) for w in model.trainable_weights]

    fitted = models.compile_model(model, learning_rate=1e-2, head="classification", prior=uniform_prior)
    assert fitted.outputs[0].shape[-1] == q
    target = np.random.default_rng(2).uniform(-0.5, 0.5, (2, 32, 32, 2)).astype(np.float32)
    fitted.train_on_batch(l, target)
    after = keras.ops.convert_to_numpy(model(l))
    assert np.abs(after - ab).max() > 1e-4  # training the logits model trained the ab model


def test_regression_models_keep_their_head():
    model = models.build_model1(64)
    assert models.head_of(model) == "regression" and models.trainable_parameters(model) == 4_756_770
    with pytest.raises(ValueError, match="regression head"):
        models.logits_model(model)


@pytest.mark.parametrize("family", models.FAMILIES)
def test_classification_mae_is_kerass_mae_of_the_decoded_ab(family, uniform_prior):
    model = _classifier_model(family, temperature=0.5)
    fitted = models.compile_model(model, head="classification", prior=uniform_prior)
    l = _l(32)
    target = np.random.default_rng(3).uniform(-0.6, 0.6, (2, 32, 32, 2)).astype(np.float32)
    reported = fitted.evaluate(l, target, verbose=0, return_dict=True)
    expected = np.mean(np.abs(keras.ops.convert_to_numpy(model(l)) - target))
    np.testing.assert_allclose(reported["mae"], expected, rtol=1e-5)
    assert np.isfinite(reported["loss"]) and reported["loss"] > 0


def test_classification_compile_mistakes_are_one_sentence(uniform_prior):
    from components import colorbins

    model = _classifier_model("model1")
    with pytest.raises(ValueError) as info:
        models.compile_model(model, head="classification")
    message = str(info.value)
    assert "needs the colour prior" in message and message.count(". ") == 0 and "\n" not in message
    with pytest.raises(ValueError, match="has the classification head, not the regression head"):
        models.compile_model(model)
    with pytest.raises(ValueError, match="Unknown head 'softmax'"):
        models.build_model("model1", 32, head="softmax")
    with pytest.raises(ValueError, match="temperature must be a positive"):
        models.build_model("model1", 32, head="classification", temperature=0)
    other = colorbins.ColorPrior.from_counts(np.ones((256, 256)), centres=colorbins.in_gamut_centres()[:-1])
    with pytest.raises(ValueError, match="colour bins differ"):
        models.compile_model(model, head="classification", prior=other)


@pytest.mark.parametrize("family", models.FAMILIES)
def test_classification_keras_file_round_trip(family, tmp_path):
    model = _classifier_model(family, temperature=0.25)
    path = str(tmp_path / f"{family}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    l = _l(32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(l)), keras.ops.convert_to_numpy(model(l)))
    assert models.head_of(loaded) == "classification"
    layer = models._annealed_mean_layer(loaded)
    assert layer.temperature == pytest.approx(0.25)
    np.testing.assert_array_equal(models.centres_of(loaded), models.centres_of(model))
    models.logits_model(loaded)  # a loaded model trains too


def test_mixed_precision_classification_model_trains_in_float32_logits(mixed_bfloat16, uniform_prior):
    model = _classifier_model("model1")
    assert model.get_layer("encoder_conv1").compute_dtype == "bfloat16"
    fitted = models.compile_model(model, head="classification", prior=uniform_prior)
    l = _l(32)
    assert keras.ops.convert_to_numpy(fitted(l)).dtype == np.float32
    assert keras.ops.convert_to_numpy(model(l)).dtype == np.float32
    target = np.random.default_rng(4).uniform(-0.5, 0.5, (2, 32, 32, 2)).astype(np.float32)
    assert np.isfinite(fitted.train_on_batch(l, target, return_dict=True)["loss"])


def test_spatial_fusion_feeds_feature_maps_keeps_the_backbone_frozen_and_saves(tmp_path):
    parts = models.build_model2_parts(
        64, width=0.25, backbone="mobilenet_v2", head="classification", fusion="spatial")
    l = _l(64)
    features = keras.ops.convert_to_numpy(parts.backbone(l))
    assert features.shape == (2, 8, 8, 576 + 1280)  # block_13_expand_relu and out_relu on the 8 x 8 bottleneck grid
    assert features.std(axis=(1, 2)).max() > 0  # a map, not one vector repeated
    _trains_the_head_only_and_saves(parts, l, str(tmp_path / "s.keras"))
    with pytest.raises(ValueError, match="Unknown fusion 'local'"):
        models.build_model2_parts(64, backbone="mobilenet_v2", fusion="local")


def test_unet_fusion_feeds_the_decoder_at_every_scale_from_the_loaded_weights(tmp_path):
    saved = keras.applications.MobileNetV2(weights=None)
    weights = str(tmp_path / "mobilenet.weights.h5")
    saved.save_weights(weights)
    parts = models.build_model2_parts(
        64, width=0.25, backbone="mobilenet_v2", weights=weights, head="classification", fusion="unet")
    extractor = _classifier(parts.backbone)
    assert extractor.input_shape == (None, 128, 128, 3)  # twice the crop's side, not 224
    for name in ("Conv1", "block_6_expand", "Conv_1"):
        for got, expected in zip(extractor.get_layer(name).get_weights(), saved.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, expected)
    l = _l(64)
    maps = {name: keras.ops.convert_to_numpy(t) for name, t in parts.backbone(l).items()}
    assert {name: m.shape for name, m in maps.items()} == {
        "embedding": (2, 8, 8, 576 + 1280), "skip_s4": (2, 16, 16, 192), "skip_s2": (2, 32, 32, 144)}
    assert all(m.std(axis=(1, 2)).max() > 0 for m in maps.values())
    _trains_the_head_only_and_saves(parts, l, str(tmp_path / "u.keras"))


def _trains_the_head_only_and_saves(parts: models.Model2Parts, l: np.ndarray, path: str) -> None:
    """A classification Model 2 trains every head weight and no backbone weight, and its .keras file reloads to
    the same colours and trains again."""
    end_to_end, backbone, head = parts
    assert models.trainable_parameters(end_to_end) == models.trainable_parameters(head)
    frozen = [w.copy() for w in backbone.get_weights()]
    fitted = models.compile_model(end_to_end, head="classification", learning_rate=1e-2, prior=_uniform_prior())
    assert fitted.output_shape == (None, l.shape[1] // 2, l.shape[2] // 2, len(models.centres_of(end_to_end)))
    before = keras.ops.convert_to_numpy(end_to_end(l))
    fitted.train_on_batch(l, np.random.default_rng(1).uniform(-0.3, 0.3, (*l.shape[:3], 2)).astype(np.float32))
    after = keras.ops.convert_to_numpy(end_to_end(l))
    assert np.abs(after - before).max() > 1e-4
    for old, new in zip(frozen, backbone.get_weights()):
        np.testing.assert_array_equal(old, new)
    end_to_end.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(l)), after, atol=1e-6)
    models.logits_model(loaded)  # a loaded model trains too


def _uniform_prior():
    from components import colorbins

    centres = colorbins.in_gamut_centres()
    return colorbins.ColorPrior(centres, np.full(len(centres), 1.0 / len(centres)), np.ones(len(centres)))
