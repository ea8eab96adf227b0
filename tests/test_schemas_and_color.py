"""The data contract and the colour module: LAB as skimage computes it, lossless records."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from components.color import LabTable, colorfulness, lab_to_rgb, rgb_to_lab
from schemas import (
    FEATURES,
    SCHEMA_VERSION,
    check_example,
    decode_lab,
    dequantize_lab,
    encode_codes,
    make_example,
    quantize_lab,
    record_schema_version,
    tfmd_schema,
)

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def _photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


@pytest.mark.parametrize("name", PHOTOS)
def test_lab_matches_skimage_on_real_photos(name):
    from skimage.color import rgb2lab

    rgb = _photo(name)
    ours = rgb_to_lab(rgb.astype(np.float32) / 255.0).numpy()
    assert np.abs(ours - rgb2lab(rgb)).max() < 0.5


@pytest.fixture(scope="module")
def lab_table():
    return LabTable()


def test_lab_table_gives_tfio_plus_quantisation(lab_table):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50_000, 3), dtype=np.uint8)
    corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)], np.uint8)
    for rgb in (pixels, corners, _photo("coffee")):
        direct = quantize_lab(rgb_to_lab(rgb.astype(np.float32) / 255.0)).numpy().astype(int)
        difference = np.abs(lab_table(rgb).astype(int) - direct)
        # float32 round-off can tip a value sitting on a rounding tie by one code, nothing more
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-4


def test_lab_table_cache_is_reused_and_a_corrupt_cache_is_rebuilt(lab_table, tmp_path):
    import os
    import shutil

    cached = tmp_path / os.path.basename(lab_table.path)
    shutil.copyfile(lab_table.path, cached)
    before = cached.stat().st_mtime_ns
    rgb = _photo("chelsea")
    np.testing.assert_array_equal(LabTable(cache_dir=str(tmp_path))(rgb), lab_table(rgb))
    assert cached.stat().st_mtime_ns == before  # loaded, not rebuilt
    cached.write_bytes(b"garbage")
    np.testing.assert_array_equal(LabTable(cache_dir=str(tmp_path))(rgb), lab_table(rgb))
    assert np.load(cached).shape == (1 << 24,)  # rebuilt and cached again


@pytest.mark.parametrize("name", PHOTOS)
def test_a_record_decodes_back_to_rgb_within_quantisation_error(name, lab_table):
    rgb = _photo(name)[:128, :160]
    stored = encode_codes(lab_table(rgb))
    back = np.round(lab_to_rgb(decode_lab(stored, 128, 160)).numpy() * 255)
    error = np.abs(back - rgb)
    assert error.mean() < 1.0 and np.percentile(error, 99.9) <= 6


def test_ingest_writes_the_tables_codes_in_the_stored_layout(lab_table):
    from components.color import unpack, unpacked_bytes

    rgb = _photo("coffee")[:50, :70]
    packed = lab_table.packed(rgb)
    assert unpacked_bytes(packed) == encode_codes(lab_table(rgb)) == encode_codes(unpack(packed))


def test_encode_writes_the_stored_codes_and_counts_them_in_one_pass(lab_table):
    from components.color import unpacked_bytes
    from components.decode import center_crop_resize
    from components.example_gen import histograms

    photo = _photo("coffee")[:60, :80]
    in_place = center_crop_resize(Image.fromarray(photo), 48)  # a view of Pillow's RGBX bytes, as ingest has
    one_colour = np.full((5, 7, 3), (200, 30, 90), np.uint8)
    for rgb in (in_place, photo, photo[::2, ::3], one_colour):
        packed = lab_table.packed(rgb)
        out = np.full(rgb.shape[0] * rgb.shape[1] * 3 + 5, 9, np.uint8)
        l_hist, ab_hist = np.full(256, 7, np.int64), np.zeros(1 << 16, np.int64)
        codes = lab_table.encode(rgb, out, l_hist, ab_hist)
        assert bytes(codes) == unpacked_bytes(packed) and out[-5:].tolist() == [9] * 5
        expected_l, expected_ab = histograms(packed)
        assert np.array_equal(l_hist - 7, expected_l)  # added to what was there
        assert np.array_equal(ab_hist.reshape(256, 256).T, expected_ab) and ab_hist.sum() == packed.size
    with pytest.raises(ValueError, match="out must be .* at least 6912 elements"):
        lab_table.encode(in_place, np.empty(100, np.uint8), l_hist, ab_hist)
    with pytest.raises(ValueError, match="ab_hist must be .* int64"):
        lab_table.encode(in_place, np.empty(48 * 48 * 3, np.uint8), l_hist, np.zeros(1 << 16, np.int32))
    with pytest.raises(ValueError, match=r"RGB pixels \[\.\.\., 3\]"):
        lab_table.encode(photo[..., :2], np.empty(60 * 80 * 3, np.uint8), l_hist, ab_hist)


def test_colorfulness_counts_uint8_pixels_of_any_layout_exactly():
    rgb = np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    for pixels in (rgb, rgb[::2, ::3], rgb[None], rgb.reshape(-1, 3), np.stack([rgb, rgb[::-1]])):
        assert colorfulness(pixels) == pytest.approx(colorfulness(pixels.astype(np.float64)), rel=1e-12)
    with pytest.raises(ValueError, match=r"RGB pixels \[\.\.\., 3\], got an array of shape \(40, 30, 2\)"):
        colorfulness(rgb[..., :2])


def test_the_models_l_and_ab_from_codes_equal_dequantising_bit_for_bit():
    from schemas import AB_SCALE, codes_to_l_ab

    codes = np.stack(np.meshgrid(np.arange(256), np.arange(256), np.arange(0, 256, 5), indexing="ij"), -1)
    l, ab = codes_to_l_ab(codes.astype(np.uint8))
    lab = dequantize_lab(codes.astype(np.uint8)).numpy()
    np.testing.assert_array_equal(l.numpy(), lab[..., :1])
    np.testing.assert_array_equal(ab.numpy(), lab[..., 1:] / AB_SCALE)
    assert l.numpy().max() == 100.0 and ab.numpy().min() == -1.0


def test_quantisation_round_trips_within_half_a_step():
    lab = np.array([[0.0, -128.0, -128.0], [100.0, 127.0, 127.0], [53.2, 80.1, 67.2], [50.0, -0.4, 0.6]], np.float32)
    back = dequantize_lab(quantize_lab(lab)).numpy()
    assert np.abs(back[:, 0] - lab[:, 0]).max() <= 100 / 255 / 2 + 1e-4
    assert np.abs(back[:, 1:] - lab[:, 1:]).max() <= 0.5 + 1e-4
    # out-of-range values clip instead of wrapping around
    assert quantize_lab(np.array([[120.0, 200.0, -300.0]], np.float32)).numpy().tolist() == [[255, 255, 0]]


def test_stored_codes_round_trip_row_major_and_bad_arrays_are_refused():
    from schemas import decode_codes

    codes = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    stored = encode_codes(codes)
    assert len(stored) == 37 * 53 * 3 and stored[:6] == codes[0, :2].tobytes()  # pixel by pixel, L a b each
    np.testing.assert_array_equal(decode_codes(stored, 37, 53).numpy(), codes)
    with pytest.raises(ValueError, match="H, W, 3"):
        encode_codes(codes[..., 0])
    with pytest.raises(ValueError, match="uint8"):
        encode_codes(codes.astype(np.int32))


def test_colorfulness_is_zero_for_gray_and_high_for_saturated():
    gray = np.repeat(np.linspace(0, 255, 64 * 64).reshape(64, 64, 1), 3, axis=2).astype(np.uint8)
    assert colorfulness(gray) == pytest.approx(0.0, abs=1e-6)
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = (255, 0, 0)
    stripes[:, 1::2] = (0, 0, 255)
    assert colorfulness(stripes) > 80


def _example(**overrides):
    fields = dict(lab_codes=encode_codes(np.zeros((8, 8, 3), np.uint8)), height=8, width=8, source="lfw",
                  path="A/A_0001.jpg", sha256="ab" * 32, colorfulness=12.5)
    fields.update(overrides)
    return make_example(**fields)


def test_serialize_example_writes_what_tensorflow_reads_and_the_same_bytes_every_time():
    import tensorflow as tf
    from tensorflow.core.example import example_pb2

    from schemas import parse_examples, serialize_example

    stored = encode_codes(np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3))
    fields = dict(lab_codes=stored, height=12, width=10, source="lfw", path="Zoë/Zoë_0001.jpg", sha256="ab" * 32,
                  colorfulness=33.25)
    serialized = serialize_example(**fields)
    assert serialized == serialize_example(**fields)
    expected = example_pb2.Example()
    feature = expected.features.feature
    feature["image/lab_codes"].bytes_list.value.append(stored)
    feature["image/height"].int64_list.value.append(12)
    feature["image/width"].int64_list.value.append(10)
    feature["image/source"].bytes_list.value.append(b"lfw")
    feature["image/path"].bytes_list.value.append("Zoë/Zoë_0001.jpg".encode("utf-8"))
    feature["image/sha256"].bytes_list.value.append(b"ab" * 32)
    feature["image/colorfulness"].float_list.value.append(33.25)
    assert example_pb2.Example.FromString(serialized) == expected
    assert serialized == expected.SerializeToString(deterministic=True)  # protobuf's own bytes, keys in order
    assert check_example(serialized, stored_size=None) == []
    parsed = parse_examples(tf.constant([serialized]))
    assert parsed["image/lab_codes"].numpy()[0] == stored and parsed["image/path"].numpy()[0].decode() == "Zoë/Zoë_0001.jpg"
    assert int(parsed["image/height"][0]) == 12 and float(parsed["image/colorfulness"][0]) == 33.25


def test_check_example_accepts_a_good_record_and_names_each_problem():
    assert check_example(_example().SerializeToString(), stored_size=8) == []
    assert check_example(b"\x00garbage") != []
    assert "stored size is 16x16" in " ".join(check_example(_example().SerializeToString(), stored_size=16))
    assert "holds 4 bytes, height x width x 3 = 8x8x3 is 192" in " ".join(
        check_example(_example(lab_codes=b"junk").SerializeToString()))
    assert "holds 192 bytes, height x width x 3 = 9x8x3 is 216" in " ".join(
        check_example(_example(height=9).SerializeToString()))
    assert "64 lowercase hex" in " ".join(check_example(_example(sha256="xyz").SerializeToString()))
    assert "'image/source' is empty" in " ".join(check_example(_example(source="").SerializeToString()))
    gray = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gray, "PNG")
    v1 = _example()
    del v1.features.feature["image/lab_codes"]
    v1.features.feature["image/lab_png"].bytes_list.value.append(gray.getvalue())
    assert record_schema_version(v1.SerializeToString()) == 1
    assert record_schema_version(_example().SerializeToString()) == SCHEMA_VERSION == 2
    (problem,) = check_example(v1.SerializeToString())
    assert "schema version 1" in problem and "re-ingest" in problem
    example = _example()
    del example.features.feature["image/width"]
    example.features.feature["extra"].int64_list.value.append(1)
    problems = check_example(example.SerializeToString())
    assert "missing feature 'image/width'" in problems and "unexpected feature 'extra'" in problems
    example = _example()
    example.features.feature["image/height"].int64_list.value.append(3)
    assert "exactly one value" in " ".join(check_example(example.SerializeToString()))


def test_the_optional_embedding_is_checked_when_present_or_required():
    from schemas import EMBEDDING_KEY, EMBEDDING_SIZE

    plain = _example().SerializeToString()
    assert check_example(plain) == []
    assert "run the embedding precompute step" in " ".join(check_example(plain, require_embedding=True))
    example = _example()
    example.features.feature[EMBEDDING_KEY].float_list.value.extend([1.0 / EMBEDDING_SIZE] * EMBEDDING_SIZE)
    assert check_example(example.SerializeToString(), require_embedding=True) == []
    example.features.feature[EMBEDDING_KEY].float_list.value.append(0.5)
    assert f"exactly {EMBEDDING_SIZE} values" in " ".join(check_example(example.SerializeToString()))
    example = _example()
    example.features.feature[EMBEDDING_KEY].float_list.value.extend([2.0] * EMBEDDING_SIZE)
    assert "is above 1.0" in " ".join(check_example(example.SerializeToString()))


def test_records_parse_with_the_feature_spec():
    import tensorflow as tf

    from schemas import parse_examples

    parsed = parse_examples(tf.constant([_example().SerializeToString()]))
    assert set(parsed) == {f.name for f in FEATURES}
    assert parsed["image/source"].numpy().tolist() == [b"lfw"]
    assert decode_lab(parsed["image/lab_codes"][0], parsed["image/height"][0], parsed["image/width"][0]).shape == (8, 8, 3)


def test_tfmd_schema_states_types_presence_and_domains():
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = tfmd_schema(stored_size=256)
    features = {f.name: f for f in schema.feature}
    assert set(features) == {f.name for f in FEATURES}
    assert features["image/lab_codes"].type == schema_pb2.BYTES
    assert features["image/height"].int_domain.min == features["image/height"].int_domain.max == 256
    assert all(f.presence.min_fraction == 1.0 and f.value_count.max == 1 for f in schema.feature)
