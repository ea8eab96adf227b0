"""The evaluator's pictures: the gray | predicted | truth test grid and historical photos colorized at their own size."""

from __future__ import annotations

import logging
import posixpath
from typing import Callable

import numpy as np
import tensorflow as tf

from components import color
from components.evaluator.errors import EvaluationError
from schemas import HISTORICAL_DIR, IMAGE_EXTENSIONS  # noqa: F401  HISTORICAL_DIR re-exported
from schemas.serving import MAX_PIXELS

GRID_ROWS_PER_COLUMN = 10

_log = logging.getLogger("components.evaluator")  # also when run as __main__


def colorize_photo(predictor: Callable, rgb: np.ndarray, size: int) -> np.ndarray:
    """Colorize one photo at its own resolution, as the serving graph does: uint8 RGB [H, W, 3] in and out.

    The model sees L resized to size x size; its ab is upsampled to H x W
    and joined with the photo's full-resolution L (components.color.colorize, the serving graph's recipe).
    """
    return color.colorize(rgb, predictor, size).numpy()

def write_png(path: str, rgb: np.ndarray) -> None:
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(tf.io.encode_png(rgb).numpy())


def historical_files(folder: str) -> list[str]:
    if not tf.io.gfile.isdir(folder):
        raise EvaluationError(f"historical dir {folder} does not exist; pass a folder of black-and-white photos.")
    names = sorted(n for n in tf.io.gfile.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise EvaluationError(
            f"historical dir {folder} holds no {', '.join(IMAGE_EXTENSIONS)} files; "
            "add photos or drop --historical_dir."
        )
    return [posixpath.join(folder, n) for n in names]


def colorize_folder(predictor: Callable, folder: str, out_dir: str, size: int) -> list[str]:
    """Colorize every photo in `folder` into out_dir/<stem>.png; unreadable files are skipped with a warning."""
    from components.decode import RejectedImage, load_rgb

    files = historical_files(folder)
    tf.io.gfile.makedirs(out_dir)
    written, stems = [], set()
    for path in files:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
        try:
            image = load_rgb(data, min_side=1, max_pixels=MAX_PIXELS)
        except RejectedImage as e:
            _log.warning("skipped historical photo %s: %s", path, e.detail)
            continue
        name = posixpath.basename(path)
        stem = name.rsplit(".", 1)[0]
        if stem in stems:  # photo.jpg and photo.png: keep both
            stem = name.replace(".", "_")
        stems.add(stem)
        out = posixpath.join(out_dir, f"{stem}.png")
        write_png(out, colorize_photo(predictor, np.asarray(image), size))
        written.append(out)
    return written



def grid(rows: list[np.ndarray], rows_per_column: int = GRID_ROWS_PER_COLUMN) -> np.ndarray:
    """gray | predicted | truth rows laid out top to bottom in columns of `rows_per_column`, left to right.

    50 images at 224 make a 5 x 10 grid of 3360 x 2240 pixels instead of one strip 11,200 pixels tall;
    cells past the last image stay white.
    """
    columns = -(-len(rows) // rows_per_column)
    height = min(len(rows), rows_per_column)
    row_h, row_w = rows[0].shape[:2]
    canvas = np.full((height * row_h, columns * row_w, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        column, r = divmod(i, rows_per_column)
        canvas[r * row_h:(r + 1) * row_h, column * row_w:(column + 1) * row_w] = row
    return canvas

