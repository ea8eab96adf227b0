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
#
# The full-resolution work runs in strips of rows of about STRIP_PIXELS pixels, so its float intermediates
# never exist for the whole image: besides a few strips, an image costs only its uint8 RGB in and out (and a
# [H, min(W, S)] float image while L is downsampled). A 49-megapixel photo took 51 bytes per pixel done at
# once; in strips 8 (13 at 12 megapixels). L is computed alone, not as a third of a full LAB
# conversion, and from the 8-bit RGB through a 256-entry table of the sRGB decoding curve.

STRIP_PIXELS = 1 << 20
"""Pixels in one strip of the full-resolution colour work: each float intermediate of a strip is 4-12 MB."""

_STRIP_PARALLELISM = 2
"""Strips in work at once (tf.while_loop's parallel_iterations): two keep two cores busy, and bound the memory."""

_SRGB_TO_LINEAR = np.where(
    np.arange(256) / 255.0 > 0.04045, ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4, np.arange(256) / 255.0 / 12.92
).astype(np.float32)
"""sRGB's decoding curve at each 8-bit value, as rgb_to_lab applies it."""

_LUMINANCE = np.array([[0.212671], [0.715160], [0.072169]], np.float32)
"""Y from linear RGB: the row of rgb_to_lab's XYZ matrix (D65's white has Y = 1)."""


def _l_of(rgb):
    """uint8 RGB [h, w, 3] -> CIELAB L [h, w, 1], 0..100: rgb_to_lab's L without computing a and b."""
    import tensorflow as tf

    linear = tf.gather(tf.constant(_SRGB_TO_LINEAR), tf.cast(rgb, tf.int32))
    y = tf.tensordot(linear, tf.constant(_LUMINANCE), axes=1)
    f = tf.where(y > 0.008856, tf.pow(y, 1.0 / 3.0), y * 7.787 + 16.0 / 116.0)
    return f * 116.0 - 16.0


def _as_uint8(rgb):
    """RGB as uint8: uint8 passes; floats 0..255 are rounded and clipped."""
    import tensorflow as tf

    rgb = tf.convert_to_tensor(rgb)
    if rgb.dtype == tf.uint8:
        return rgb
    return tf.cast(tf.clip_by_value(tf.round(tf.cast(rgb, tf.float32)), 0.0, 255.0), tf.uint8)


def _by_strips(image, make_strip, dtype, channels: int):
    """make_strip(start, stop) for rows [start, stop) of `image` [H, W, ...], strip after strip; concatenated."""
    import tensorflow as tf

    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    rows = tf.maximum(1, STRIP_PIXELS // tf.maximum(width, 1))
    count = (height + rows - 1) // rows
    strips = tf.TensorArray(dtype, size=count, infer_shape=False, element_shape=tf.TensorShape([None, None, channels]))

    def body(i, strips):
        start = i * rows
        return i + 1, strips.write(i, make_strip(start, tf.minimum(start + rows, height)))

    _, strips = tf.while_loop(lambda i, _: i < count, body, (tf.constant(0), strips),
                              parallel_iterations=_STRIP_PARALLELISM)
    return strips.concat()


def model_input(rgb, size: int):
    """RGB [H, W, 3] (uint8, or float 0..255) -> L [size, size, 1] for the model (antialiased bilinear).

    Separable: each strip's L is resized across to min(W, size) columns, then the [H, min(W, size)] whole
    down to size rows (equal to one 2-D resize within float rounding).
    """
    import tensorflow as tf

    rgb = _as_uint8(rgb)
    columns = tf.minimum(tf.shape(rgb)[1], size)

    def strip(start, stop):
        return tf.image.resize(_l_of(rgb[start:stop]), [stop - start, columns], method="bilinear", antialias=True)

    narrow = _by_strips(rgb, strip, tf.float32, 1)
    return tf.image.resize(narrow, [size, size], method="bilinear", antialias=True)


def colorize_output(rgb, ab):
    """The image's RGB [H, W, 3] (its L is used) + the model's ab [S, S, 2] (LAB units) -> uint8 RGB [H, W, 3].

    Each strip's ab is sampled straight from the S x S ab (ScaleAndTranslate, translated to the strip's first
    row): the rows of one bilinear upsampling to H x W, without that H x W x 2 float image.
    """
    import tensorflow as tf

    rgb = _as_uint8(rgb)
    shape = tf.shape(rgb)
    ab = tf.convert_to_tensor(ab, tf.float32)[None]
    scale = tf.cast(shape[:2], tf.float32) / tf.cast(tf.shape(ab)[1:3], tf.float32)

    def strip(start, stop):
        ab_rows = tf.raw_ops.ScaleAndTranslate(
            images=ab, size=tf.stack([stop - start, shape[1]]), scale=scale,
            translation=tf.stack([-tf.cast(start, tf.float32), 0.0]), kernel_type="triangle", antialias=True,
        )[0]
        colour = lab_to_rgb(tf.concat([_l_of(rgb[start:stop]), ab_rows], axis=-1))
        return tf.cast(tf.round(colour * 255.0), tf.uint8)

    return _by_strips(rgb, strip, tf.uint8, 3)


def colorize(rgb, predict_ab, size: int):
    """Colorize one image at its own resolution: RGB [H, W, 3] -> uint8 RGB [H, W, 3].

    `predict_ab` maps an L batch [B, size, size, 1] (0..100) to ab [B, size, size, 2] in LAB units.
    """
    return colorize_output(rgb, predict_ab(model_input(rgb, size)[None])[0])


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler and Suesstrunk (2003) colourfulness of an RGB image (uint8, or floats on the same 0..255 scale).

    0 for a gray image; about 15 'slightly colourful', 33 'moderately', 59
    'quite', 82 'highly colourful'.
    """
    x = np.asarray(rgb)
    if x.dtype == np.uint8 and x.ndim >= 1 and x.shape[-1] == 3:
        return _colorfulness_uint8(x)
    (rg_values, rg_counts), (yb_values, yb_counts) = _opponent_histograms(x)
    return _hasler_suesstrunk(rg_values, rg_counts, yb_values, yb_counts)


def _colorfulness_uint8(rgb: np.ndarray) -> float:
    """colorfulness of uint8 pixels [..., 3] from the opponent channels' integer sums, one compiled pass
    (ingest's grayscale check runs it on every image): exact up to the final square roots."""
    from components import kernels

    if rgb.ndim != 3:
        rgb = rgb.reshape(-1, 1, 3) if rgb.ndim < 3 else rgb.reshape((-1,) + rgb.shape[-2:])
    n, rg, rg2, yb2x, yb2x2 = (int(v) for v in kernels.opponent_sums(rgb))  # yb2x = 2 yb = R + G - 2 B
    if n == 0:
        raise ValueError("colourfulness of an image without pixels is undefined")
    rg_std = (n * rg2 - rg * rg) ** 0.5 / n  # exact integer variances: no cancellation for flat colours
    yb_std = (n * yb2x2 - yb2x * yb2x) ** 0.5 / (2 * n)
    return float(np.hypot(rg_std, yb_std) + 0.3 * np.hypot(rg / n, yb2x / (2 * n)))


def colorfulness_abs(rgb: np.ndarray) -> float:
    """The colourfulness score of the DDColor paper's tables: Hasler-Suesstrunk on |R - G| and |(R + G)/2 - B|.

    As DDColor's `calculate_cf` (github.com/piddnad/DDColor, basicsr/metrics/colorfulness.py) computes it
    on uint8 images: sigma_rgyb + 0.3 mu_rgyb with absolute opponent channels, so the mean term counts
    colour of either sign and scores run higher than `colorfulness`'s. 0 for a gray image.
    """
    (rg_values, rg_counts), (yb_values, yb_counts) = _opponent_histograms(rgb)
    return _hasler_suesstrunk(np.abs(rg_values), rg_counts, np.abs(yb_values), yb_counts)


def _opponent_histograms(rgb: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The opponent channels rg = R - G and yb = (R + G) / 2 - B of every pixel, as (values, counts) each.

    For uint8 images they are exact integer histograms (rg over -255..255, 2 yb over -510..510): two
    narrow-integer passes and two bincounts instead of float copies of the image, and the moments that
    follow are exact. Other dtypes give each pixel's own value with count 1.
    """
    x = np.asarray(rgb)
    if x.ndim == 0 or x.shape[-1] != 3:
        raise ValueError(f"colourfulness needs RGB pixels [..., 3], got an array of shape {x.shape}")
    if x.dtype != np.uint8:
        x = x.astype(np.float64)
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        ones = np.ones(r.size)
        return ((r - g).ravel(), ones), ((0.5 * (r + g) - b).ravel(), ones)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    rg = np.subtract(r, g, dtype=np.int16)
    rg += 255
    yb = np.add(r, g, dtype=np.int16)
    yb += 510
    yb -= b
    yb -= b  # 2 yb + 510: 0..1020
    rg_counts = np.bincount(rg.ravel(), minlength=511)
    yb_counts = np.bincount(yb.ravel(), minlength=1021)
    return (np.arange(-255, 256.0), rg_counts), (np.arange(-510, 511.0) / 2, yb_counts)


def _hasler_suesstrunk(rg: np.ndarray, rg_counts: np.ndarray, yb: np.ndarray, yb_counts: np.ndarray) -> float:
    """sigma_rgyb + 0.3 mu_rgyb from weighted values of the two opponent channels."""

    def mean_std(values, counts):
        n = counts.sum()
        mean = float(np.dot(counts, values) / n)
        variance = float(np.dot(counts, (values - mean) ** 2) / n)
        return mean, variance**0.5

    rg_mean, rg_std = mean_std(rg, rg_counts)
    yb_mean, yb_std = mean_std(yb, yb_counts)
    return float(np.hypot(rg_std, yb_std) + 0.3 * np.hypot(rg_mean, yb_mean))


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
        import threading

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
        self._local = threading.local()

    def packed(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB [..., 3] -> uint32 [...]: L | a << 8 | b << 16 (codes)."""
        rgb = np.asarray(rgb, dtype=np.uint8)
        words = _words(rgb)
        index = np.empty(words.shape, np.intp)  # the index type take wants: one pass, no converted copy
        np.bitwise_and(words, 0xFFFFFF, out=index, casting="unsafe")
        return self._table.take(index).reshape(rgb.shape[:-1])

    def encode(self, rgb: np.ndarray, out: np.ndarray, l_hist: np.ndarray, ab_hist: np.ndarray) -> memoryview:
        """uint8 RGB [..., 3] -> its LAB codes as a record stores them (the bytes of schemas.encode_codes),
        written into `out` (uint8, at least 3 bytes per pixel) and returned as a view of it; adds every
        pixel's L code to `l_hist` [256] and its (a code, b code) to `ab_hist` [65536] at a + 256 b
        (both int64, contiguous). One compiled pass (components.kernels): the same codes as `packed`, in
        about a third of the time of `packed`, `unpacked_bytes` and counting the histograms in numpy.
        """
        from components import kernels

        rgb = np.asarray(rgb, dtype=np.uint8)
        words = _words(rgb).reshape(-1)
        n = words.size
        _check_buffer("out", out, np.uint8, 3 * n, at_least=True)
        _check_buffer("l_hist", l_hist, np.int64, 256)
        _check_buffer("ab_hist", ab_hist, np.int64, 1 << 16)
        kernels.lab_codes(words, self._table, out, self._scratch(n), l_hist, ab_hist)
        return memoryview(out)[: 3 * n]

    def _scratch(self, n: int) -> np.ndarray:
        """A uint32 [n] work buffer of the calling thread, kept between calls (a new one costs page faults)."""
        buffer = getattr(self._local, "scratch", None)
        if buffer is None or buffer.size < n:
            buffer = self._local.scratch = np.empty(n, np.uint32)
        return buffer[:n]

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB [..., 3] -> uint8 LAB codes [..., 3]."""
        packed = self.packed(rgb)
        return unpack(packed.reshape(-1, 1) if packed.ndim != 2 else packed).reshape(*packed.shape, 3)


def _check_buffer(name: str, array: np.ndarray, dtype, size: int, at_least: bool = False) -> None:
    """LabTable.encode's arrays go to compiled code that does no bounds checking: refuse any other kind."""
    if (array.ndim != 1 or array.dtype != dtype or not array.flags.c_contiguous or not array.flags.writeable
            or array.size < size or (not at_least and array.size != size)):
        raise ValueError(f"LabTable.encode's {name} must be a writable contiguous 1-D {np.dtype(dtype)} array of "
                         f"{'at least ' if at_least else ''}{size} elements, got {array.dtype} {array.shape}")


def _words(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] -> the 32-bit RGBX words of its pixels [...] (red in the low byte), read in place
    where `rgb` is a view of an RGBX buffer (as decode.center_crop_resize returns), else converted by Pillow."""
    from PIL import Image

    if rgb.ndim == 0 or rgb.shape[-1] != 3:
        raise ValueError(f"LAB codes need RGB pixels [..., 3], got an array of shape {rgb.shape}")
    words = _rgbx_words(rgb)
    if words is None:
        image = rgb if rgb.ndim == 3 else rgb.reshape(-1, 1, 3)
        words = np.asarray(Image.fromarray(np.ascontiguousarray(image), "RGB").convert("RGBX")).view("<u4")[..., 0]
    return words.reshape(rgb.shape[:-1])


def _rgbx_words(rgb: np.ndarray) -> np.ndarray | None:
    """The little-endian 32-bit words under `rgb`'s pixels, channel 0 in the low byte and the byte after
    channel 2 in the high one, when its pixels lie 4 bytes apart in one contiguous buffer that holds that
    byte too (the view `rgbx[..., :3]` of an RGBX buffer, as decode.center_crop_resize returns); else None."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or not isinstance(rgb.base, np.ndarray):
        return None
    height, width, _ = rgb.shape
    if rgb.strides != (4 * width, 4, 1) or rgb.base.dtype != np.uint8 or not rgb.base.flags.c_contiguous:
        return None
    low, high = np.byte_bounds(rgb.base)
    start = rgb.__array_interface__["data"][0]
    if not low <= start <= high - 4 * height * width:  # the padding bytes are inside the same buffer
        return None
    rgbx = np.lib.stride_tricks.as_strided(rgb, shape=(height, width, 4), writeable=False)
    return rgbx.view("<u4")[..., 0]


def unpack(packed: np.ndarray) -> np.ndarray:
    """LabTable.packed codes [H, W] -> contiguous uint8 LAB codes [H, W, 3] (read-only)."""
    height, width = packed.shape
    return np.frombuffer(unpacked_bytes(packed), np.uint8).reshape(height, width, 3)


def unpacked_bytes(packed: np.ndarray) -> bytes:
    """LabTable.packed codes [H, W] -> the codes' bytes as a record stores them (schemas.encode_codes), one copy."""
    from PIL import Image

    height, width = packed.shape
    packed = np.ascontiguousarray(packed, dtype="<u4")
    return Image.frombuffer("RGBX", (width, height), packed, "raw", "RGBX", 0, 1).tobytes("raw", "RGB")
