"""The decoder accepts every odd-but-valid image with the right pixels and rejects bad files with their reason."""

from __future__ import annotations

import pickle
import time
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from components.decode import REASONS, RejectedImage, center_crop_resize, decode_and_crop, load_rgb
from tests import corpus

SIZE = 64
MIN_COLORFULNESS = 10.0
LIMITS = dict(size=SIZE, min_side=SIZE, max_pixels=16 * SIZE * SIZE, min_colorfulness=MIN_COLORFULNESS)

DETAIL_MENTIONS = {
    "empty": "empty",
    "not_an_image": "not a",
    "unsupported": "supported",
    "decompression_bomb": "bomb",
    "too_small": "minimum",
    "truncated": "truncated",
    "corrupt": "corrupt",
    "grayscale": "grayscale",
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bad")
    expected = corpus.write_bad_corpus(str(directory), size=SIZE)
    return {name: ((directory / name).read_bytes(), reason) for name, reason in expected.items()}


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    directory = tmp_path_factory.mktemp("odd")
    names = corpus.write_odd_valid_corpus(str(directory), size=SIZE)
    return {name: (directory / name).read_bytes() for name in names}


def crop_of(data: bytes, **overrides) -> np.ndarray:
    return decode_and_crop(data, **{**LIMITS, **overrides})[0]


def assert_color(pixels: np.ndarray, expected, tolerance: int = 6):
    difference = np.abs(pixels.reshape(-1, 3).astype(int) - np.asarray(expected)).max()
    assert difference <= tolerance, f"pixels differ from {expected} by up to {difference}"


def test_bad_files_are_rejected_with_their_reason_and_a_sentence(bad):
    assert {reason for _, reason in bad.values()} == set(REASONS)
    for name, (data, reason) in bad.items():
        with pytest.raises(RejectedImage) as caught:
            decode_and_crop(data, **LIMITS)
        error = caught.value
        assert error.reason == reason, f"{name}: {error.reason} ({error.detail})"
        assert error.detail.endswith(".") and str(error) == error.detail, name
        assert DETAIL_MENTIONS[reason] in error.detail, f"{name}: {error.detail}"


def test_too_small_names_the_size_and_the_minimum(bad):
    with pytest.raises(RejectedImage) as caught:
        decode_and_crop(bad["too_small.png"][0], **LIMITS)
    assert f"{SIZE // 2}x{SIZE // 2}" in caught.value.detail and str(SIZE) in caught.value.detail


def mutate(data: bytes, rng: np.random.Generator, kind: int) -> bytes:
    """Overwrites a few bytes, truncates, deletes a run or inserts random bytes."""
    buffer = np.frombuffer(data, np.uint8).copy()
    start = int(rng.integers(1, len(buffer)))
    if kind == 0:
        positions = rng.integers(0, len(buffer), rng.integers(1, 12))
        buffer[positions] = rng.integers(0, 256, len(positions))
        return buffer.tobytes()
    if kind == 1:
        return buffer[:start].tobytes()
    if kind == 2:
        return np.delete(buffer, np.arange(start, min(len(buffer), start + int(rng.integers(1, 64))))).tobytes()
    noise = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8)
    return np.insert(buffer, start, noise).tobytes()


@pytest.mark.parametrize("warning_filter, trials", [("ignore", 300), ("error", 100)])
def test_mutated_files_raise_nothing_but_rejected_image(warning_filter, trials):
    rng = np.random.default_rng(7)
    image = corpus.textured(96, 80, seed=3)
    originals = [corpus.encode(image, "JPEG", quality=85), corpus.encode(image, "PNG")]
    outcomes = {"accepted": 0, "rejected": 0}
    with warnings.catch_warnings():
        warnings.simplefilter(warning_filter)
        for trial in range(trials):
            data = mutate(originals[trial % 2], rng, kind=trial // 2 % 4)
            try:
                crop, _ = decode_and_crop(data, size=32, min_side=32, max_pixels=1_000_000, min_colorfulness=1.0)
            except RejectedImage as e:
                assert e.reason in REASONS and e.detail
                outcomes["rejected"] += 1
            else:
                assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
                outcomes["accepted"] += 1
    assert outcomes["rejected"] > trials // 4 and outcomes["accepted"] > 0, outcomes


def test_odd_valid_files_decode_to_square_uint8(odd):
    for name, data in odd.items():
        try:
            crop, score = decode_and_crop(data, **LIMITS)
        except RejectedImage as e:
            pytest.fail(f"{name} rejected: {e.reason}: {e.detail}")
        assert crop.shape == (SIZE, SIZE, 3) and crop.dtype == np.uint8, name
        assert score > 40, name


def test_exif_orientation_is_applied(odd):
    upright = load_rgb(odd["exif_rotated.jpg"], min_side=SIZE, max_pixels=LIMITS["max_pixels"])
    assert upright.size == (SIZE, 2 * SIZE)
    crop = crop_of(odd["exif_rotated.jpg"])
    assert_color(crop[4 : SIZE // 2 - 4], corpus.RED, tolerance=12)
    assert_color(crop[SIZE // 2 + 4 : -4], corpus.BLUE, tolerance=12)


@pytest.mark.parametrize("name", ["palette_transparent.png", "rgba_transparent.png", "rgba_transparent.webp"])
def test_transparent_areas_become_white(odd, name):
    crop = crop_of(odd[name])
    assert_color(crop[SIZE // 2 + 2 :], (255, 255, 255), tolerance=2)
    assert_color(crop[: SIZE // 2 - 2, 2 : SIZE // 4 - 2], corpus.RED, tolerance=2)


@pytest.mark.parametrize("name", ["animated.gif", "animated.png", "animated.webp"])
def test_animations_use_their_first_frame(odd, name):
    assert_color(crop_of(odd[name]), corpus.RED, tolerance=2)


def test_sixteen_bit_rgb_is_scaled_not_clipped(odd):
    crop = crop_of(odd["rgb48.png"])
    assert_color(crop[:, 2 : SIZE // 2 - 2], (128, 64, 0), tolerance=1)
    assert_color(crop[:, SIZE // 2 + 2 : -2], (0, 128, 255), tolerance=1)


@pytest.mark.parametrize("array", [np.full((SIZE, SIZE), 32768, np.uint16), np.full((SIZE, SIZE), 32768, np.int32)])
def test_sixteen_bit_gray_is_scaled_not_clipped(array):
    image = Image.fromarray(array)
    data = corpus.encode(image, "PNG" if image.mode == "I;16" else "TIFF")
    rgb = load_rgb(data, min_side=SIZE, max_pixels=LIMITS["max_pixels"])
    assert rgb.mode == "RGB"
    assert_color(np.asarray(rgb), (128, 128, 128), tolerance=1)


@pytest.mark.parametrize("name", ["cmyk.jpg", "cmyk.tif", "palette.png", "stripes.bmp", "stripes.tif", "stripes.webp"])
def test_colors_survive_conversion(odd, name):
    crop = crop_of(odd[name])
    band = SIZE // len(corpus.STRIPE_COLORS)
    for index, color in enumerate(corpus.STRIPE_COLORS):
        assert_color(crop[:, index * band + 3 : (index + 1) * band - 3], color, tolerance=8)


def test_lab_tiff_is_converted_through_icc(odd):
    crop = crop_of(odd["lab.tif"])
    band = SIZE // len(corpus.STRIPE_COLORS)
    for index, color in enumerate(corpus.STRIPE_COLORS):
        assert_color(crop[:, index * band + 3 : (index + 1) * band - 3], color, tolerance=30)


@pytest.mark.parametrize("shape", [(300, 100), (100, 300)])
def test_center_crop_resize_keeps_the_centre(shape):
    width, height = shape
    image = corpus.centre_marked(max(shape), min(shape))
    if height > width:
        image = image.transpose(Image.Transpose.TRANSPOSE)
    crop = center_crop_resize(image, 50)
    assert crop.shape == (50, 50, 3) and crop.dtype == np.uint8
    assert_color(crop[2:-2, 2:-2], corpus.GREEN, tolerance=2)


def test_center_crop_resize_leaves_exact_size_untouched():
    image = corpus.stripes(SIZE, SIZE)
    assert np.array_equal(center_crop_resize(image, SIZE), np.asarray(image))


def test_large_jpeg_is_decoded_small_and_keeps_its_content():
    image = corpus.centre_marked(3000, 2000)
    data = corpus.encode(image, "JPEG", quality=90)
    assert load_rgb(data, min_side=256, max_pixels=10**7, draft_size=256).size == (750, 500)
    assert load_rgb(data, min_side=256, max_pixels=10**7).size == (3000, 2000)
    crop, _ = decode_and_crop(data, size=256, min_side=256, max_pixels=10**7, min_colorfulness=MIN_COLORFULNESS)
    expected = center_crop_resize(image, 256)
    assert np.abs(crop.astype(int) - expected).mean() < 2
    assert_color(crop[:, 80:176], corpus.GREEN, tolerance=6)


def test_large_odd_jpeg_goes_through_draft(odd):
    assert load_rgb(odd["large.jpg"], min_side=SIZE, max_pixels=LIMITS["max_pixels"], draft_size=SIZE).size == (
        2 * SIZE,
        3 * SIZE // 2,
    )
    crop = crop_of(odd["large.jpg"])
    assert_color(crop[:, SIZE // 3 + 3 : 2 * SIZE // 3 - 3], corpus.GREEN, tolerance=8)


def test_bomb_is_rejected_from_the_header_without_decoding(monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    start = time.perf_counter()
    for data, max_pixels in [(corpus.bomb_png(), 10**8), (corpus.bomb_png(5000, 5000), 10**6)]:
        with pytest.raises(RejectedImage) as caught:
            decode_and_crop(data, size=SIZE, min_side=SIZE, max_pixels=max_pixels, min_colorfulness=0)
        assert caught.value.reason == "decompression_bomb"
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("pillow_limit", [None, 10**12])
def test_bomb_detection_does_not_depend_on_pillow_limit(monkeypatch, pillow_limit):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
    for data in (corpus.bomb_png(), corpus.bomb_png(5000, 5000)):
        with pytest.raises(RejectedImage) as caught:
            load_rgb(data, min_side=SIZE, max_pixels=10**6)
        assert caught.value.reason == "decompression_bomb"
        assert "bomb" in caught.value.detail
    assert Image.MAX_IMAGE_PIXELS == pillow_limit


def test_gray_images_pass_when_no_colour_is_required(bad):
    for name in ("gray.jpg", "gray_rgb.jpg", "gray16.png"):
        crop, score = decode_and_crop(bad[name][0], **{**LIMITS, "min_colorfulness": 0.0})
        assert crop.shape == (SIZE, SIZE, 3) and score < 1.0, name


def test_unexpected_decoder_errors_become_corrupt_but_memory_errors_are_left_to_retry(monkeypatch, odd):
    def broken(self):
        raise RuntimeError("decoder state machine broke")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    with pytest.raises(RejectedImage) as caught:
        load_rgb(odd["stripes.bmp"], min_side=SIZE, max_pixels=LIMITS["max_pixels"])
    assert caught.value.reason == "corrupt" and "state machine broke" in caught.value.detail

    def short_of_memory(self):
        raise MemoryError("out of memory in decoder")

    monkeypatch.setattr(ImageFile.ImageFile, "load", short_of_memory)
    with pytest.raises(MemoryError):  # says nothing about the file: example_gen decodes it again
        decode_and_crop(odd["stripes.bmp"], **LIMITS)


def test_rejected_image_carries_reason_and_detail():
    error = RejectedImage("too_small", "The image is 10x10; its shorter side 10 is under the minimum of 64.")
    assert str(error) == error.detail
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.reason, copy.detail) == (error.reason, error.detail)
    with pytest.raises(ValueError):
        RejectedImage("blurry", "Not a reason code.")
