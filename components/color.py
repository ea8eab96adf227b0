"""Colour science shared by every stage: sRGB <-> CIELAB and colourfulness.

The conversion is tensorflow-io's (`tfio.experimental.color`, D65 white, 2
degree observer), which matches `skimage.color.rgb2lab`, the report's
converter, so the same ops run in Beam, in tf.data and inside the exported
serving graph.
"""

from __future__ import annotations

import numpy as np


def rgb_to_lab(rgb):
    """float RGB in [0, 1], shape [..., 3] -> float LAB (L 0..100, a/b about -128..127)."""
    import tensorflow as tf
    import tensorflow_io as tfio

    return tfio.experimental.color.rgb_to_lab(tf.convert_to_tensor(rgb, tf.float32))


def lab_to_rgb(lab):
    """float LAB, shape [..., 3] -> float RGB clipped to [0, 1]."""
    import tensorflow as tf
    import tensorflow_io as tfio

    rgb = tfio.experimental.color.lab_to_rgb(tf.convert_to_tensor(lab, tf.float32))
    return tf.clip_by_value(rgb, 0.0, 1.0)


# ---------------------------------------------------------------- the colorization recipe
# The model sees L resized to its training side S; its ab is upsampled to the image's H x W and joined with the
# full-resolution L. Written once here for the serving graph (components.export, per image inside tf.map_fn,
# the model called on the whole batch in between) and the evaluator's historical photos (colorize, one image).
# Only stock TensorFlow ops (tensorflow-io's colour ops are plain TF Python), so the SavedModel stays loadable
# by stock tensorflow_model_server.


def colorize_inputs(rgb, size: int):
    """RGB [H, W, 3] (uint8 or float 0..255) -> (L [H, W, 1] at full resolution, L [size, size, 1] for the model)."""
    import tensorflow as tf

    l = rgb_to_lab(tf.cast(rgb, tf.float32) / 255.0)[..., :1]
    return l, tf.image.resize(l, [size, size], method="bilinear", antialias=True)


def colorize_output(l, ab):
    """Full-resolution L [H, W, 1] + the model's ab [S, S, 2] (LAB units) -> uint8 RGB [H, W, 3]."""
    import tensorflow as tf

    ab = tf.image.resize(ab, tf.shape(l)[:2], method="bilinear", antialias=True)
    rgb = lab_to_rgb(tf.concat([l, ab], axis=-1))
    return tf.cast(tf.round(rgb * 255.0), tf.uint8)


def colorize(rgb, predict_ab, size: int):
    """Colorize one image at its own resolution: RGB [H, W, 3] -> uint8 RGB [H, W, 3].

    `predict_ab` maps an L batch [B, size, size, 1] (0..100) to ab [B, size, size, 2] in LAB units.
    """
    l, l_small = colorize_inputs(rgb, size)
    return colorize_output(l, predict_ab(l_small[None])[0])


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk (2003) colourfulness of a uint8 RGB image.

    0 for a gray image; about 15 'slightly colourful', 33 'moderately', 59
    'quite', 82 'highly colourful'.
    """
    x = np.asarray(rgb, dtype=np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def colorfulness_abs(rgb: np.ndarray) -> float:
    """The colourfulness score of the DDColor paper's tables: Hasler-Suesstrunk on |R - G| and |(R + G)/2 - B|.

    As DDColor's `calculate_cf` (github.com/piddnad/DDColor, basicsr/metrics/colorfulness.py) computes it
    on uint8 images: sigma_rgyb + 0.3 mu_rgyb with absolute opponent channels, so the mean term counts
    colour of either sign and scores run higher than `colorfulness`'s. 0 for a gray image.
    """
    x = np.asarray(rgb, dtype=np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg = np.abs(r - g)
    yb = np.abs(0.5 * (r + g) - b)
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


_TABLE_VERSION = 2


def _build_lab_table() -> np.ndarray:
    """Quantised LAB codes of all 2^24 8-bit sRGB colours, packed into uint32.

    Indexed by r | g << 8 | b << 16: the little-endian value of an RGBX pixel.
    """
    import tensorflow as tf

    from schemas import quantize_lab

    @tf.function
    def block(red):
        g, b = tf.meshgrid(tf.range(256), tf.range(256), indexing="ij")
        rgb = tf.stack([tf.broadcast_to(red[:, None, None], [red.shape[0], 256, 256]),
                        tf.broadcast_to(g, [red.shape[0], 256, 256]),
                        tf.broadcast_to(b, [red.shape[0], 256, 256])], axis=-1)
        codes = tf.cast(quantize_lab(rgb_to_lab(tf.cast(rgb, tf.float32) / 255.0)), tf.int64)
        return codes[..., 0] + codes[..., 1] * 256 + codes[..., 2] * 65536

    table = np.empty((256, 256, 256), np.uint32)
    for r in range(0, 256, 16):
        table[r : r + 16] = block(tf.range(r, r + 16)).numpy().astype(np.uint32)
    return np.ascontiguousarray(table.transpose(2, 1, 0)).reshape(-1)


class LabTable:
    """sRGB uint8 -> quantised LAB codes, exactly as tfio's rgb_to_lab + quantize_lab.

    The conversion is tabulated once over every 8-bit sRGB colour (64 MiB,
    cached on local disk), so ingest looks pixels up instead of running
    pow() twice per channel: the same codes (a value on a rounding tie may
    differ by one code, as between two batch shapes of the direct op), about
    8x faster per image.
    """

    def __init__(self, cache_dir: str | None = None):
        import os

        from schemas import AB_OFFSET, L_SCALE, SCHEMA_VERSION

        cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "colorization")
        name = f"lab_table_v{_TABLE_VERSION}_s{SCHEMA_VERSION}_{L_SCALE:.6f}_{AB_OFFSET:g}.npy"
        path = self.path = os.path.join(cache_dir, name)
        table = None
        if os.path.exists(path):
            try:
                table = np.load(path, mmap_mode="r")
                if table.shape != (1 << 24,) or table.dtype != np.uint32:
                    table = None
            except (OSError, ValueError):
                table = None
        if table is None:
            table = _build_lab_table()
            try:
                os.makedirs(cache_dir, exist_ok=True)
                tmp = f"{path}.{os.getpid()}.tmp.npy"
                np.save(tmp, table)
                os.replace(tmp, path)
            except OSError:
                pass  # an unwritable cache only costs the rebuild next time
        self._table = np.ascontiguousarray(table)

    def packed(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB [..., 3] -> uint32 [...]: L | a << 8 | b << 16 (codes)."""
        from PIL import Image

        rgb = np.asarray(rgb, dtype=np.uint8)
        image = rgb if rgb.ndim == 3 else rgb.reshape(-1, 1, 3)
        rgbx = np.asarray(Image.fromarray(np.ascontiguousarray(image), "RGB").convert("RGBX"))
        index = rgbx.view("<u4")[..., 0] & 0xFFFFFF
        return self._table.take(index).reshape(rgb.shape[:-1])

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB [..., 3] -> uint8 LAB codes [..., 3]."""
        packed = self.packed(rgb)
        return unpack(packed.reshape(-1, 1) if packed.ndim != 2 else packed).reshape(*packed.shape, 3)


def unpack(packed: np.ndarray) -> np.ndarray:
    """LabTable.packed codes [H, W] -> contiguous uint8 LAB codes [H, W, 3] (read-only)."""
    height, width = packed.shape
    return np.frombuffer(unpacked_bytes(packed), np.uint8).reshape(height, width, 3)


def unpacked_bytes(packed: np.ndarray) -> bytes:
    """LabTable.packed codes [H, W] -> the codes' bytes as a record stores them (schemas.encode_codes), one copy."""
    from PIL import Image

    height, width = packed.shape
    packed = np.ascontiguousarray(packed, dtype="<u4")
    return Image.frombuffer("RGBX", (width, height), packed, "raw", "RGBX", 0, 1).convert("RGB").tobytes()
