"""Compiled per-pixel loops of ingest (numba): LAB codes with their histograms, and colourfulness sums.

Ingest does three things to every pixel of every image besides decoding
it: looks its LAB codes up in `color.LabTable`, counts them into the L and
ab histograms of the statistics, and writes them into the record. Done in
numpy these are four passes over the image, with temporaries in between
(take, two bincounts, repacking to bytes: 1.1 ms per 250x250 image on this
project's 2-core machines); here they are one compiled function with no
temporary but a scratch buffer (0.3 ms). The colourfulness check before
conversion sums the opponent channels in one pass too (0.26 -> 0.05 ms).

numba compiles each function on first use in a process and caches the
machine code beside this file (or in numba's user cache directory when
that is read-only), so a Beam worker pays the compile once per machine.
The functions here do no bounds checking: the public wrappers in `color`
check every array's shape and type before calling them.
"""

from __future__ import annotations

import numba
import numpy as np

_L_COPIES = 4  # L counts go to interleaved copies: consecutive pixels of one code then do not wait on each other


@numba.njit(cache=True, nogil=True)
def lab_codes(words, table, out, scratch, l_hist, ab_hist):  # pragma: no cover - compiled
    """RGBX words [n] -> LAB code bytes `out` [3 n] (L a b per pixel); adds L codes to l_hist [256] and
    (a, b) codes to ab_hist [65536] at a + 256 b. `table` is LabTable's [2^24] packed codes, scratch a uint32 [n]."""
    n = words.size
    for i in range(n):  # the lookups alone, so the table's cache misses overlap
        scratch[i] = table[words[i] & 0xFFFFFF]
    l_counts = np.zeros((_L_COPIES, 256), np.int64)
    for i in range(n):
        code = scratch[i]
        out[3 * i] = code & 0xFF
        out[3 * i + 1] = (code >> 8) & 0xFF
        out[3 * i + 2] = (code >> 16) & 0xFF
        l_counts[i % _L_COPIES, code & 0xFF] += 1
        ab_hist[(code >> 8) & 0xFFFF] += 1
    for copy in range(_L_COPIES):
        for level in range(256):
            l_hist[level] += l_counts[copy, level]


@numba.njit(cache=True, nogil=True)
def opponent_sums(rgb):  # pragma: no cover - compiled
    """uint8 RGB [H, W, 3] (any strides) -> (pixels, sum rg, sum rg^2, sum 2yb, sum (2yb)^2) of the opponent
    channels rg = R - G and 2 yb = R + G - 2 B, as exact integers."""
    rg_sum = rg_squares = yb_sum = yb_squares = 0
    for y in range(rgb.shape[0]):
        for x in range(rgb.shape[1]):
            r = np.int64(rgb[y, x, 0])
            g = np.int64(rgb[y, x, 1])
            b = np.int64(rgb[y, x, 2])
            rg = r - g
            yb = r + g - 2 * b
            rg_sum += rg
            rg_squares += rg * rg
            yb_sum += yb
            yb_squares += yb * yb
    return rgb.shape[0] * rgb.shape[1], rg_sum, rg_squares, yb_sum, yb_squares
