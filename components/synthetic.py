"""The built-in dataset: seeded, LFW-shaped folders of colour scenes whose colours are learnable.

Every colour follows a rule a model can read from the gray (L) channel alone:
sky is bright, smooth and bluer towards the top above a horizon; vegetation
below it is textured and green; faces are smooth, shaded skin-tone ellipses
(most images hold one large central face, like LFW); objects take their hue
from their shape (squares red, triangles yellow, circles violet, stars blue)
whatever their brightness. The palette is balanced so the mean a and b over
many images are near 0, so predicting one constant colour cannot beat the
gray baseline, while learning the rules beats it clearly.

Content depends only on (seed, image index): any number of workers, and any
``num_images``, give the same files for the same indices.

    python -m components.synthetic --output_dir /tmp/synthetic --num_images 2000 --seed 0 --workers 4
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import sys
from functools import partial
from typing import Sequence

import numpy as np
from PIL import Image

MIXED_SIZE_RANGE = (250, 320)
JPEG_QUALITY = 90
_IDENTITY_SIZES = (1, 6)
_IDENTITY_CHUNK = 1024

_FIRST = (
    "Ada", "Alan", "Amara", "Ana", "Arjun", "Bea", "Bruno", "Carla", "Chen", "Dario",
    "Dina", "Elif", "Emil", "Farah", "Felix", "Gita", "Hana", "Hugo", "Ines", "Ivan",
    "Jonas", "Kara", "Kenji", "Lena", "Luis", "Maya", "Milo", "Nadia", "Noah", "Olga",
    "Omar", "Paula", "Quinn", "Rafael", "Rosa", "Sami", "Sofia", "Tariq", "Uma", "Vera",
    "Wei", "Yara", "Yusuf", "Zoe",
)
_LAST = (
    "Abe", "Alvarez", "Berg", "Costa", "Dubois", "Eze", "Fischer", "Garcia", "Haddad",
    "Ito", "Jensen", "Kim", "Kowalski", "Lopez", "Mensah", "Moreau", "Nakamura", "Novak",
    "Okafor", "Olsen", "Park", "Petrov", "Quispe", "Rossi", "Sato", "Silva", "Singh",
    "Tanaka", "Tran", "Uddin", "Varga", "Weber", "Xu", "Yilmaz", "Zhang", "Ziegler",
)

# Shape -> (sRGB colour at full brightness). Hue comes from shape, brightness is random.
_SHAPE_COLOURS = {
    "square": (0.86, 0.16, 0.12),
    "triangle": (0.95, 0.82, 0.12),
    "circle": (0.62, 0.22, 0.82),
    "star": (0.18, 0.32, 0.90),
}
_SHAPES = tuple(_SHAPE_COLOURS)
_SKY_TOP = (0.22, 0.34, 0.85)
_SKY_LOW = (0.66, 0.80, 0.96)
_GREEN = (0.36, 0.56, 0.08)
_HORIZON = (0.36, 0.68)
_HAIR = (0.22, 0.15, 0.10)
_LIPS = (0.70, 0.28, 0.30)
_CLOTH = (0.22, 0.23, 0.26)
_PORTRAIT_FRACTION = 0.6
_NOISE = 10.0  # width of the uniform pixel noise, in 8-bit levels
_SKIN_TONES = np.array(
    [(0.96, 0.76, 0.64), (0.90, 0.66, 0.52), (0.78, 0.54, 0.40), (0.58, 0.38, 0.27)], np.float32
)


def _soft(signed_distance_px: np.ndarray) -> np.ndarray:
    """Antialiased coverage from a signed distance in pixels (negative inside)."""
    return np.clip(0.5 - signed_distance_px, 0.0, 1.0)


def _rgb(values: Sequence[float], scale: float = 1.0) -> np.ndarray:
    """A colour shaped [3, 1, 1] so it broadcasts over a channel-first image."""
    return (np.asarray(values, np.float32) * np.float32(scale)).reshape(3, 1, 1)


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray, box: tuple[slice, slice]) -> None:
    """Alpha-blend `colour` ([3, h, w] or [3, 1, 1]) into the `box` region of channel-first `img`."""
    region = img[:, box[0], box[1]]
    region += alpha * (colour - region)


def _box(cy: float, cx: float, ry: float, rx: float, h: int, w: int):
    """Pixel bounding box of a shape plus its pixel-centre coordinates relative to (cy, cx)."""
    y0, y1 = max(int(cy - ry) - 2, 0), min(int(cy + ry) + 3, h)
    x0, x1 = max(int(cx - rx) - 2, 0), min(int(cx + rx) + 3, w)
    if y0 >= y1 or x0 >= x1:
        return None
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - cy)
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - cx)
    return (slice(y0, y1), slice(x0, x1)), yy, xx


def _value_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth noise in [0, 1]: a coarse random grid bilinearly upsampled to [h, w]."""
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Blue sky, bluer and darker towards the top, over textured green vegetation; [3, h, w]."""
    y = (np.arange(h, dtype=np.float32)[:, None] + np.float32(0.5)) / np.float32(h)
    x = (np.arange(w, dtype=np.float32)[None, :] + np.float32(0.5)) / np.float32(w)
    horizon = np.float32(rng.uniform(*_HORIZON)) + np.float32(rng.uniform(0.0, 0.06)) * np.sin(
        np.float32(2 * np.pi) * (np.float32(rng.uniform(0.5, 2.0)) * x + np.float32(rng.random()))
    )
    t = np.clip(y / horizon, 0.0, 1.0)
    top = _rgb(_SKY_TOP, rng.uniform(0.85, 1.05))
    low = _rgb(_SKY_LOW, rng.uniform(0.93, 1.03))
    img = top + (low - top) * t

    first_row = max(int(horizon.min() * h) - 1, 0)
    rows = h - first_row
    blades = rng.random(w, dtype=np.float32)[None, :]
    fine = rng.random((rows, w), dtype=np.float32)
    patches = _value_noise(rng, rows, w, 4)
    texture = np.float32(0.4) + np.float32(0.34) * blades + np.float32(0.3) * fine + np.float32(0.21) * patches
    green = _rgb(_GREEN) * rng.uniform(0.9, 1.1, 3).astype(np.float32).reshape(3, 1, 1)
    ground = img[:, first_row:]
    ground_alpha = _soft((horizon - y[first_row:]) * np.float32(h))
    ground += ground_alpha * (green * texture - ground)
    return img


def _face(img: np.ndarray, rng: np.random.Generator, cy: float, cx: float, rx: float, detailed: bool) -> None:
    """A shaded skin-tone ellipse; `detailed` adds hair, eyes and lips (the LFW portrait)."""
    _, h, w = img.shape
    ry = rx * rng.uniform(1.2, 1.4)
    if detailed:
        hair = _box(cy - 0.25 * ry, cx, 0.95 * ry, 1.12 * rx, h, w)
        if hair is not None:
            box, yy, xx = hair
            q = np.sqrt((xx / np.float32(1.12 * rx)) ** 2 + (yy / np.float32(0.95 * ry)) ** 2)
            _paint(img, _soft((q - 1.0) * np.float32(rx)), _rgb(_HAIR, rng.uniform(0.4, 1.0)), box)
    found = _box(cy, cx, ry, rx, h, w)
    if found is None:
        return
    box, yy, xx = found
    u, v = xx / np.float32(rx), yy / np.float32(ry)
    q2 = u * u + v * v
    z = np.sqrt(np.clip(1.0 - q2, 0.0, 1.0))
    light = rng.normal(size=3) * (0.5, 0.4, 0.0) + (0.0, -0.3, 1.0)
    light = (light / np.linalg.norm(light)).astype(np.float32)
    shade = np.float32(0.55) + np.float32(0.5) * np.clip(light[0] * u + light[1] * v + light[2] * z, 0.0, 1.0)
    tone = _rgb(_SKIN_TONES[rng.integers(len(_SKIN_TONES))], rng.uniform(0.92, 1.05))
    skin = np.minimum(tone * shade, 1.0)
    if detailed:
        for side in (-1.0, 1.0):
            e = ((xx - np.float32(side * 0.38 * rx)) / np.float32(0.16 * rx)) ** 2 + (
                (yy + np.float32(0.12 * ry)) / np.float32(0.07 * ry)) ** 2
            eye = _soft((np.sqrt(e) - 1.0) * np.float32(0.07 * ry))
            skin += eye * (np.float32(0.12) - skin)
        m = (xx / np.float32(0.3 * rx)) ** 2 + ((yy - np.float32(0.5 * ry)) / np.float32(0.07 * ry)) ** 2
        lip = _soft((np.sqrt(m) - 1.0) * np.float32(0.07 * ry))
        skin += lip * (_rgb(_LIPS) * shade - skin)
    _paint(img, _soft((np.sqrt(q2) - 1.0) * np.float32(min(rx, ry))), skin, box)


def _torso(img: np.ndarray, rng: np.random.Generator, cy: float, cx: float, rx: float) -> None:
    """Dark, near-neutral clothing under a portrait face (as in most LFW photos)."""
    _, h, w = img.shape
    top = cy + 1.43 * rx
    half = rx * rng.uniform(1.8, 2.4)
    y0 = max(int(top) - 2, 0)
    if y0 >= h:
        return
    y = np.arange(y0, h, dtype=np.float32)[:, None] + np.float32(0.5)
    dx = (np.arange(w, dtype=np.float32)[None, :] + np.float32(0.5 - cx))
    shoulders = np.float32(top) + np.float32(0.6 / half) * dx * dx
    inside = np.maximum(shoulders - y, np.abs(dx) - np.float32(half))
    _paint(img, _soft(inside), _rgb(_CLOTH, rng.uniform(0.5, 1.6)), (slice(y0, h), slice(0, w)))


def _shape(img: np.ndarray, rng: np.random.Generator, kind: str) -> None:
    """One dark-outlined object whose hue is fixed by `kind` and whose brightness is random."""
    _, h, w = img.shape
    r = rng.uniform(0.06, 0.16) * min(h, w)
    cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    angle = rng.uniform(0, 2 * np.pi)
    brightness = rng.uniform(0.45, 1.0)
    found = _box(cy, cx, 1.45 * r, 1.45 * r, h, w)
    if found is None:
        return
    box, yy, xx = found
    if kind == "square":
        c, s = np.float32(np.cos(angle / 12)), np.float32(np.sin(angle / 12))
        sd = np.maximum(np.abs(c * xx + s * yy), np.abs(c * yy - s * xx)) - np.float32(0.85 * r)
    elif kind == "triangle":
        edges = [np.float32(np.cos(angle + k * 2 * np.pi / 3)) * xx + np.float32(np.sin(angle + k * 2 * np.pi / 3)) * yy
                 for k in range(3)]
        sd = np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - np.float32(0.6 * r)
    elif kind == "circle":
        sd = np.sqrt(xx * xx + yy * yy) - np.float32(r)
    else:
        theta = np.arctan2(yy, xx) + np.float32(angle)
        arm = np.float32(r) * (np.float32(0.72) + np.float32(0.38) * np.cos(5 * theta))
        sd = (np.sqrt(xx * xx + yy * yy) - arm) * np.float32(0.8)
    fill = _rgb(_SHAPE_COLOURS[kind], brightness) * (np.float32(0.9) - np.float32(0.1 / r) * np.clip(yy, -r, r))
    outline = _soft(np.abs(sd + 1.0) - 1.0)
    fill = fill + outline * (np.float32(0.08) - fill)
    _paint(img, _soft(sd), fill, box)


def render_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One colour scene as uint8 RGB [height, width, 3], drawn entirely from `rng`."""
    img = _background(rng, height, width)
    side = min(height, width)
    portrait = rng.random() < _PORTRAIT_FRACTION
    for _ in range(rng.integers(0, 3) if portrait else rng.integers(1, 5)):
        _shape(img, rng, _SHAPES[rng.integers(len(_SHAPES))])
    for _ in range(0 if portrait else rng.integers(0, 3)):
        _face(img, rng, rng.uniform(0.2, 0.8) * height, rng.uniform(0.15, 0.85) * width,
              rng.uniform(0.05, 0.1) * side, detailed=False)
    if portrait:
        rx = rng.uniform(0.17, 0.23) * side
        cy = height * rng.uniform(0.42, 0.52)
        cx = width * (0.5 + rng.uniform(-0.05, 0.05))
        _torso(img, rng, cy, cx, rx)
        _face(img, rng, cy, cx, rx, detailed=True)
    noise = np.frombuffer(rng.bytes(img.size), np.uint8).reshape(img.shape)
    img *= np.float32(255.0)
    img += noise * np.float32(_NOISE / 255.0) + np.float32(0.5 - _NOISE / 2)
    np.clip(img, 0.0, 255.0, out=img)
    return np.dstack(img.astype(np.uint8))


def _identity_names(seed: int, count: int) -> list[str]:
    """`count` distinct LFW-style names (First_Last), the same prefix for any count."""
    pairs = [(f, l) for f in _FIRST for l in _LAST]
    order = np.random.default_rng([seed, 2]).permutation(len(pairs))
    names = []
    for j in range(count):
        first, last = pairs[order[j % len(pairs)]]
        cycle = j // len(pairs)
        names.append(f"{first}_{last}" + (f"_{cycle + 1}" if cycle else ""))
    return names


def _relative_paths(seed: int, num_images: int) -> list[tuple[str, str]]:
    """(identity folder, file stem) per image index; a prefix of the list for a larger count."""
    rng = np.random.default_rng([seed, 1])
    sizes: list[int] = []
    while sum(sizes) < num_images:
        sizes.extend(rng.integers(_IDENTITY_SIZES[0], _IDENTITY_SIZES[1] + 1, _IDENTITY_CHUNK).tolist())
    out = []
    for name, n in zip(_identity_names(seed, len(sizes)), sizes):
        out.extend((name, f"{name}_{k:04d}") for k in range(1, n + 1))
        if len(out) >= num_images:
            break
    return out[:num_images]


def _write_one(job: tuple[int, str, str], output_dir: str, seed: int, size: int | None,
               png_fraction: float) -> str:
    """Render image `index` and write it; its bytes depend only on (seed, index, size, format)."""
    index, folder, stem = job
    rng = np.random.default_rng([seed, 0, index])
    as_png = rng.random() < png_fraction
    drawn = rng.integers(MIXED_SIZE_RANGE[0], MIXED_SIZE_RANGE[1] + 1, 2)
    height, width = (size, size) if size is not None else (int(drawn[0]), int(drawn[1]))
    pixels = render_scene(rng, height, width)
    path = os.path.join(output_dir, folder, f"{stem}.{'png' if as_png else 'jpg'}")
    buf = io.BytesIO()
    if as_png:
        Image.fromarray(pixels).save(buf, format="PNG")
    else:
        Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    return path


def generate(output_dir: str, num_images: int, *, seed: int = 0, size: int | None = None,
             png_fraction: float = 0.1, workers: int = 1) -> list[str]:
    """Write `num_images` scenes as `<output_dir>/<Name>/<Name>_0001.jpg` (LFW layout); return the paths, sorted.

    `size=None` mixes sizes (each side 250..320), an int makes every image that
    square size. Existing files of the same names are overwritten.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}.")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")
    if size is not None and size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}.")
    if not 0.0 <= png_fraction <= 1.0:
        raise ValueError(f"png_fraction must be between 0 and 1, got {png_fraction}.")
    jobs = [(i, folder, stem) for i, (folder, stem) in enumerate(_relative_paths(seed, num_images))]
    write = partial(_write_one, output_dir=output_dir, seed=seed, size=size, png_fraction=png_fraction)
    os.makedirs(output_dir, exist_ok=True)
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            paths = pool.map(write, jobs, chunksize=max(1, min(64, len(jobs) // (4 * workers))))
    else:
        paths = [write(job) for job in jobs]
    return sorted(paths)


def _number(text: str, kind: type, low: float, high: float | None, what: str) -> int | float:
    """Parse a CLI number, or fail with one sentence saying what was expected."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
    return value


def _positive_int(text: str) -> int:
    return _number(text, int, 1, None, "a positive integer")


def _non_negative_int(text: str) -> int:
    return _number(text, int, 0, None, "an integer >= 0")


def _fraction(text: str) -> float:
    return _number(text, float, 0.0, 1.0, "a number between 0 and 1")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write a synthetic LFW-shaped image folder."""
    parser = argparse.ArgumentParser(
        prog="python -m components.synthetic",
        description="Write the built-in synthetic colorization dataset: one folder per identity, "
        "<Name>/<Name>_0001.jpg, colours that follow learnable rules (sky, vegetation, faces, "
        "shape-coded objects). Same seed, same files.",
    )
    parser.add_argument("--output_dir", required=True, help="folder to write into (created if missing)")
    parser.add_argument("--num_images", required=True, type=_positive_int, help="how many images to write")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--size", type=_positive_int, default=None,
                        help="square side in pixels for every image (LFW: 250); default mixed sizes, "
                        f"each side {MIXED_SIZE_RANGE[0]}..{MIXED_SIZE_RANGE[1]}")
    parser.add_argument("--png_fraction", type=_fraction, default=0.1,
                        help="fraction of images written as PNG instead of JPEG (default 0.1)")
    parser.add_argument("--workers", type=_positive_int, default=1, help="parallel processes (default 1)")
    args = parser.parse_args(argv)
    if args.size is not None and args.size < 8:
        parser.error(f"argument --size: must be at least 8 pixels, got {args.size}")
    paths = generate(args.output_dir, args.num_images, seed=args.seed, size=args.size,
                     png_fraction=args.png_fraction, workers=args.workers)
    print(f"Wrote {len(paths)} images to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
