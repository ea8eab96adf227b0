"""Deterministic files that exercise the decoder: bad ones and odd-but-valid ones.

Used by tests/test_decode.py and by example_gen's integration tests, which
drop these files into a source folder and check the rejection counts.

The expected outcomes hold for `components.decode.decode_and_crop` called
with `size=size`, `size // 2 < min_side <= size`, `16 * size**2 <= max_pixels
< 10**10` and `1 <= min_colorfulness <= 20`. Every valid file is at least
`size` on its shorter side and strongly colourful (colorfulness > 40).
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image, ImageCms

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
YELLOW = (255, 255, 0)
MAGENTA = (255, 0, 255)
CYAN = (0, 255, 255)
STRIPE_COLORS = (RED, GREEN, BLUE, YELLOW)

BOMB_SIDE = 100_000
RGB48_LEFT = (32768, 16384, 0)
RGB48_RIGHT = (0, 32768, 65535)


def stripes(width: int, height: int, colors=STRIPE_COLORS) -> Image.Image:
    """Vertical bands of equal width, one per colour, left to right."""
    columns = np.arange(width) * len(colors) // width
    row = np.asarray(colors, np.uint8)[columns]
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(row, (height, width, 3))))


def halves(width: int, height: int, left=RED, right=BLUE) -> Image.Image:
    return stripes(width, height, (left, right))


def centre_marked(width: int, height: int, centre=GREEN, flanks=(RED, BLUE)) -> Image.Image:
    """Left third, centre third and right third in three colours."""
    return stripes(width, height, (flanks[0], centre, flanks[1]))


def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """Colourful stripes plus noise, so encoded files have real entropy to cut."""
    rng = np.random.default_rng(seed)
    base = np.asarray(stripes(width, height), np.int16)
    noisy = base + rng.integers(-40, 41, base.shape, dtype=np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def encode(image: Image.Image, image_format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG from raw parts with correct CRCs; `idat` is the compressed stream as is."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def rgb48_png(width: int, height: int, left=RGB48_LEFT, right=RGB48_RIGHT) -> bytes:
    """16-bit-per-channel RGB PNG, left and right halves; Pillow cannot write these."""
    pixels = np.empty((height, width, 3), ">u2")
    pixels[:, : width // 2] = left
    pixels[:, width // 2 :] = right
    raw = b"".join(b"\x00" + row.tobytes() for row in pixels)
    return png_bytes(width, height, 16, 2, zlib.compress(raw))


def bomb_png(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A 60-byte-ish PNG whose header claims width x height RGB pixels."""
    return png_bytes(width, height, 8, 2, zlib.compress(b"\x00" * 16))


def exif_rotated_jpeg(width: int, height: int) -> bytes:
    """Stored left half red, right half blue, with EXIF orientation 6 (rotate 90 clockwise to view).

    Viewed upright, the image is height x width with red on top.
    """
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(halves(width, height), "JPEG", quality=95, exif=exif)


def write_bad_corpus(directory: str, *, size: int = 64) -> dict[str, str]:
    """Writes files the decoder must reject; returns relative filename -> expected reason."""
    colourful_jpeg = encode(textured(2 * size, 2 * size), "JPEG", quality=90)
    colourful_png = encode(textured(2 * size, 2 * size), "PNG")
    gray = Image.fromarray(np.tile(np.linspace(0, 255, 2 * size).astype(np.uint8), (2 * size, 1)))
    files = {
        "empty.jpg": (b"", "empty"),
        "text.jpg": (b"This is a text file, not a photograph.\n" * 20, "not_an_image"),
        "page.jpg": (
            b"<!DOCTYPE html><html><head><title>404 Not Found</title></head>"
            b"<body><h1>Not Found</h1></body></html>\n",
            "not_an_image",
        ),
        "random.png": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not_an_image"),
        "truncated.jpg": (colourful_jpeg[: len(colourful_jpeg) // 2], "truncated"),
        "truncated.png": (colourful_png[: len(colourful_png) // 2], "truncated"),
        "corrupt.jpg": (_undefined_quant_tables(colourful_jpeg), "corrupt"),
        "corrupt.png": (png_bytes(2 * size, 2 * size, 8, 2, b"\x78\x9c" + bytes(range(256))), "corrupt"),
        "too_small.png": (encode(stripes(size // 2, size // 2), "PNG"), "too_small"),
        "too_thin.jpg": (encode(stripes(4 * size, size // 2), "JPEG", quality=90), "too_small"),
        "bomb.png": (bomb_png(), "decompression_bomb"),
        "gray.jpg": (encode(gray, "JPEG", quality=90), "grayscale"),
        "gray_rgb.jpg": (encode(gray.convert("RGB"), "JPEG", quality=90), "grayscale"),
        "gray16.png": (encode(Image.fromarray(np.asarray(gray, np.uint16) * 257), "PNG"), "grayscale"),
        "stripes.ppm": (encode(stripes(2 * size, 2 * size), "PPM"), "unsupported"),
    }
    _write(directory, {name: data for name, (data, _) in files.items()})
    return {name: reason for name, (_, reason) in files.items()}


def write_odd_valid_corpus(directory: str, *, size: int = 64) -> list[str]:
    """Writes unusual but valid colourful files the decoder must accept; returns their names.

    Contents the tests rely on: exif_rotated.jpg as in exif_rotated_jpeg(2
    * size, size); *transparent* files have an opaque striped top half and a
    fully transparent black bottom half; animated files show RED first, then
    BLUE; rgb48.png has RGB48_LEFT / RGB48_RIGHT halves; large.jpg is 4 *
    size x 3 * size with a GREEN centre third; the rest are `stripes`.
    """
    square = stripes(size, size)
    transparent = np.zeros((size, size, 4), np.uint8)
    transparent[: size // 2, :, :3] = np.asarray(square)[: size // 2]
    transparent[: size // 2, :, 3] = 255
    rgba = Image.fromarray(transparent)
    index = np.broadcast_to(np.arange(size) * len(STRIPE_COLORS) // size, (size, size)).astype(np.uint8)
    index[size // 2 :] = len(STRIPE_COLORS)
    palette_transparent = Image.frombytes("P", (size, size), index.tobytes())
    palette_transparent.putpalette([channel for color in STRIPE_COLORS for channel in color] + [0, 0, 0])
    frames = [Image.new("RGB", (size, size), RED), Image.new("RGB", (size, size), BLUE)]
    animation = dict(save_all=True, append_images=frames[1:], duration=100, loop=0)
    srgb_to_lab = ImageCms.buildTransform(
        ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
    )
    files = {
        "exif_rotated.jpg": exif_rotated_jpeg(2 * size, size),
        "cmyk.jpg": encode(square.convert("CMYK"), "JPEG", quality=95),
        "cmyk.tif": encode(square.convert("CMYK"), "TIFF"),
        "palette.png": encode(square.quantize(len(STRIPE_COLORS)), "PNG"),
        "palette_transparent.png": encode(palette_transparent, "PNG", transparency=len(STRIPE_COLORS)),
        "rgba_transparent.png": encode(rgba, "PNG"),
        "rgba_transparent.webp": encode(rgba, "WEBP", lossless=True),
        "rgb48.png": rgb48_png(size, size),
        "animated.gif": encode(frames[0], "GIF", **animation),
        "animated.png": encode(frames[0], "PNG", **animation),
        "animated.webp": encode(frames[0], "WEBP", lossless=True, **animation),
        "stripes.bmp": encode(square, "BMP"),
        "stripes.tif": encode(square, "TIFF", compression="tiff_lzw"),
        "stripes.webp": encode(square, "WEBP", quality=90),
        "lab.tif": encode(ImageCms.applyTransform(square, srgb_to_lab), "TIFF"),
        "large.jpg": encode(centre_marked(4 * size, 3 * size), "JPEG", quality=90),
    }
    _write(directory, files)
    return list(files)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _undefined_quant_tables(jpeg: bytes) -> bytes:
    """Points every component of the frame header at quantisation table 3, which is never defined.

    Pillow identifies the file; libjpeg fails when it starts decoding.
    """
    data = bytearray(jpeg)
    position = 2
    while data[position + 1] not in (0xC0, 0xC1, 0xC2):
        position += 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
    components = data[position + 9]
    for component in range(components):
        data[position + 10 + 3 * component + 2] = 3
    return bytes(data)


def _write(directory: str, files: dict[str, bytes]) -> None:
    os.makedirs(directory, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
