"""Decode one image file's bytes into a square 8-bit RGB crop, or say why not.

This is the ingest hot path of example_gen: every file found in a source
folder goes through `decode_and_crop`. It never raises anything but
`RejectedImage`, whose `reason` is one of `REASONS` (counted per reason by
the Beam job) and whose `detail` is one sentence for the rejection report,
and `MemoryError`, which says nothing about the file (the worker was short
of memory at that moment): example_gen retries it.

Safety: formats are limited to `FORMATS`; the pixel count is checked from
the header before any pixel is decoded, independently of Pillow's global
`MAX_IMAGE_PIXELS`; no global Pillow setting is changed. Truncated files are
rejected because Pillow's default `ImageFile.LOAD_TRUNCATED_IMAGES = False`
is relied on (a process that sets it to True gets gray-filled images instead).

Speed: JPEGs are decoded with DCT scaling (`Image.draft`) straight to the
smallest scale whose shorter side is still >= the crop size, and the crop
and resize are one `Image.resize(box=...)` call.
"""

from __future__ import annotations

import functools
import io
from typing import Callable, TypeVar

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from components.color import colorfulness

REASONS = (
    "empty",
    "not_an_image",
    "unsupported",
    "decompression_bomb",
    "too_small",
    "truncated",
    "corrupt",
    "grayscale",
)

FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")
_FORMAT_LIST = ", ".join(FORMATS[:-1]) + " or " + FORMATS[-1]

# Pillow's resize is antialiased for every filter (the kernel widens with the
# scale). Measured at 250x250 -> 256 and 500x375 -> 256: bicubic is within
# 44-47 dB PSNR of Lanczos, bilinear only 37-39 dB (visibly softer), and
# bicubic costs about 0.3-0.6 ms more than bilinear and 0.4-0.6 ms less than
# Lanczos per crop. A reducing gap of 3 halves the time of big non-JPEG
# downscales (3000x2000 -> 256: 25 -> 11 ms) for 0.8 dB.
RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WHITE = (255, 255, 255)
_MAX_DETAIL = 200

T = TypeVar("T")


class RejectedImage(Exception):
    """An input file that cannot become a training example; `reason` is in REASONS."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}; expected one of {REASONS}")
        super().__init__(detail)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.reason, self.detail)


def load_rgb(data: bytes, *, min_side: int, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode to an 8-bit RGB PIL image, orientation applied.

    `draft_size`, for JPEGs, lets the decoder shrink the image by DCT scaling
    as long as its shorter side stays >= draft_size.
    """
    return _guarded(lambda: _decode(_open(data, min_side=min_side, max_pixels=max_pixels), draft_size))


def center_crop_resize(image: Image.Image, size: int) -> np.ndarray:
    """Shorter side resized to `size` and centre-cropped: uint8 [size, size, 3].

    The result is a read-only view of the resized image's bytes, 4 per pixel
    (RGB and a padding byte, as Pillow holds RGB): `LabTable.packed` reads
    such a view as 32-bit words without converting it. Copy it before
    writing into it.
    """
    if image.mode != "RGB":
        raise ValueError(f"center_crop_resize needs an RGB image, got mode {image.mode}; decode it with load_rgb")
    width, height = image.size
    if (width, height) != (size, size):
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        image = image.resize(
            (size, size), RESAMPLE, box=(left, top, left + side, top + side), reducing_gap=REDUCING_GAP
        )
    rgbx = np.frombuffer(image.tobytes("raw", "RGBX"), np.uint8).reshape(size, size, 4)
    return rgbx[..., :3]


def decode_and_crop(
    data: bytes, *, size: int, min_side: int, max_pixels: int, min_colorfulness: float
) -> tuple[np.ndarray, float]:
    """load_rgb + center_crop_resize + grayscale check; returns (crop, colorfulness).

    Single-channel images are rejected as grayscale from the header, before
    decoding, whenever min_colorfulness > 0.
    """

    def run() -> tuple[np.ndarray, float]:
        image = _open(data, min_side=min_side, max_pixels=max_pixels)
        if min_colorfulness > 0 and image.mode in _GRAY_MODES:
            raise RejectedImage("grayscale", f"The image is single-channel grayscale (mode {image.mode}).")
        crop = center_crop_resize(_decode(image, size), size)
        score = colorfulness(crop[::2, ::2])  # means and spreads: every second pixel gives the same figure
        if score < min_colorfulness:
            raise RejectedImage(
                "grayscale",
                f"The image is grayscale or nearly so (colorfulness {score:.1f}, minimum {min_colorfulness:g}).",
            )
        return crop, score

    return _guarded(run)


def _guarded(fn: Callable[[], T]) -> T:
    """Runs fn, turning every exception but MemoryError into a RejectedImage."""
    try:
        return fn()
    except (RejectedImage, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RejectedImage("decompression_bomb", f"The image is too large to decode safely: {_short(e)}.") from e
    except EOFError as e:
        raise _truncated(_short(e) or "unexpected end of file") from e
    except Exception as e:
        message = _short(e) or type(e).__name__
        if "truncated" in message:
            raise _truncated(message) from e
        raise RejectedImage("corrupt", f"The image data is corrupt and could not be decoded: {message}.") from e


def _truncated(message: str) -> RejectedImage:
    return RejectedImage("truncated", f"The file ends before its image data does, probably cut short: {message}.")


def _short(error: BaseException) -> str:
    message = " ".join(str(error).split()).rstrip(".")
    return message if len(message) <= _MAX_DETAIL else message[: _MAX_DETAIL - 3] + "..."


def _open(data: bytes, *, min_side: int, max_pixels: int) -> Image.Image:
    """Identifies the image and checks its header size; decodes no pixels."""
    if not data:
        raise RejectedImage("empty", "The file is empty (0 bytes).")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    width, height = image.size
    if width * height > max_pixels:
        raise RejectedImage(
            "decompression_bomb",
            f"The header claims {width}x{height} = {width * height} pixels, over the limit of {max_pixels}; "
            "likely a decompression bomb.",
        )
    if min(width, height) < min_side:
        raise RejectedImage(
            "too_small",
            f"The image is {width}x{height}; its shorter side {min(width, height)} is under the minimum of {min_side}.",
        )
    return image


def _unidentified(data: bytes) -> RejectedImage:
    """Names the format of an image Pillow reads but this pipeline does not accept."""
    try:
        image_format = Image.open(io.BytesIO(data)).format
    except Exception:
        image_format = None
    if image_format:
        return RejectedImage(
            "unsupported", f"The file is a {image_format} image; only {_FORMAT_LIST} images are supported."
        )
    return RejectedImage(
        "not_an_image", f"The file's {len(data)} bytes are not a {_FORMAT_LIST} image."
    )


def _decode(image: Image.Image, draft_size: int | None) -> Image.Image:
    """Decodes pixels (first frame), applies EXIF orientation, converts to RGB."""
    if draft_size and image.format in ("JPEG", "MPO") and min(image.size) >= 2 * draft_size:
        image.draft("RGB", (draft_size, draft_size))
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    return _to_rgb(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit scaled (not clipped), alpha composited on white, LAB via ICC."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _SIXTEEN_BIT_MODES:
        levels = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        image = Image.fromarray(((levels * 255 + 32767) // 65535).astype(np.uint8))
        return image.convert("RGB")
    if mode == "F":
        raise RejectedImage("unsupported", "The image has 32-bit floating-point pixels, which are not supported.")
    if mode == "LAB":
        return ImageCms.applyTransform(image, lab_to_srgb_transform())
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _WHITE)
        flat.paste(rgba, mask=rgba)
        return flat
    return image.convert("RGB")


@functools.cache
def lab_to_srgb_transform() -> ImageCms.ImageCmsTransform:
    """LittleCMS LAB -> sRGB for Pillow's LAB mode (8 bits: L * 2.55, a and b as signed bytes)."""
    return ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
