"""The built-in synthetic dataset: deterministic, LFW-shaped, colourful and learnable from gray."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import sobel, uniform_filter
from skimage.color import lab2rgb, rgb2lab

from components import synthetic
from components.color import colorfulness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digests(paths: list[str], root: str) -> dict[str, str]:
    out = {}
    for p in paths:
        with open(p, "rb") as f:
            out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _load(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_same_seed_gives_identical_files_even_when_rewritten(tmp_path):
    a = synthetic.generate(str(tmp_path / "a"), 12, seed=5, size=48)
    b = synthetic.generate(str(tmp_path / "b"), 12, seed=5, size=48)
    again = synthetic.generate(str(tmp_path / "a"), 12, seed=5, size=48)
    assert a == sorted(a) and len(a) == 12
    assert _digests(a, str(tmp_path / "a")) == _digests(b, str(tmp_path / "b"))
    assert _digests(again, str(tmp_path / "a")) == _digests(a, str(tmp_path / "a"))


def test_different_seed_gives_different_images(tmp_path):
    a = synthetic.generate(str(tmp_path / "a"), 8, seed=0, size=48)
    b = synthetic.generate(str(tmp_path / "b"), 8, seed=1, size=48)
    assert not set(_digests(a, str(tmp_path / "a")).values()) & set(_digests(b, str(tmp_path / "b")).values())


def test_first_images_do_not_depend_on_count_or_workers(tmp_path):
    few = synthetic.generate(str(tmp_path / "few"), 5, seed=3, size=40)
    many = synthetic.generate(str(tmp_path / "many"), 14, seed=3, size=40, workers=2)
    few_d = _digests(few, str(tmp_path / "few"))
    many_d = _digests(many, str(tmp_path / "many"))
    assert len(many_d) == 14
    assert {k: many_d.get(k) for k in few_d} == few_d


def test_folder_tree_is_lfw_like_with_exact_fixed_size(tmp_path):
    paths = synthetic.generate(str(tmp_path), 40, seed=0, size=64)
    by_folder: dict[str, list[int]] = {}
    for p in paths:
        rel = os.path.relpath(p, tmp_path)
        match = re.fullmatch(r"([A-Za-z0-9_]+)/\1_(\d{4})\.(jpg|png)", rel)
        assert match, rel
        by_folder.setdefault(match.group(1), []).append(int(match.group(2)))
        assert Image.open(p).size == (64, 64)
    assert len(by_folder) > 5
    assert max(len(v) for v in by_folder.values()) > 1
    assert all(sorted(v) == list(range(1, len(v) + 1)) for v in by_folder.values())


def test_mixed_sizes_stay_in_range_and_vary(tmp_path):
    paths = synthetic.generate(str(tmp_path), 8, seed=0)
    sizes = [Image.open(p).size for p in paths]
    lo, hi = synthetic.MIXED_SIZE_RANGE
    assert all(lo <= s <= hi for wh in sizes for s in wh)
    assert len(set(sizes)) > 4
    assert any(w != h for w, h in sizes)


def test_default_png_fraction_gives_both_formats(tmp_path):
    paths = synthetic.generate(str(tmp_path / "mixed"), 80, seed=0, size=16)
    formats = [Image.open(p).format for p in paths]
    assert formats.count("JPEG") > 55 and 2 <= formats.count("PNG") <= 20
    assert all(p.endswith(".png") == (f == "PNG") for p, f in zip(paths, formats))
    only_png = synthetic.generate(str(tmp_path / "png"), 4, seed=0, size=16, png_fraction=1.0)
    assert all(Image.open(p).format == "PNG" for p in only_png)


def test_images_are_colourful(tmp_path):
    paths = synthetic.generate(str(tmp_path), 40, seed=0, size=64)
    scores = np.array([colorfulness(_load(p)) for p in paths])
    assert np.mean(scores > 15.0) >= 0.95, scores.min()


def test_palette_is_balanced_so_a_constant_colour_cannot_help():
    labs = [rgb2lab(synthetic.render_scene(np.random.default_rng([7, i]), 48, 48)) for i in range(200)]
    mean_a = np.mean([lab[..., 1].mean() for lab in labs])
    mean_b = np.mean([lab[..., 2].mean() for lab in labs])
    assert abs(mean_a) < 4.0 and abs(mean_b) < 4.0, (mean_a, mean_b)


def _gray_features(lum: np.ndarray) -> np.ndarray:
    """Per-pixel features a gray image shows: height, L, local mean/std of L, L gradient; and their products."""
    h, w = lum.shape
    l = lum / 100.0
    mean = uniform_filter(l, 5, mode="reflect")
    std = np.sqrt(np.maximum(uniform_filter(l * l, 5, mode="reflect") - mean * mean, 0.0)) * 4.0
    grad = np.hypot(sobel(l, 0), sobel(l, 1))
    y = np.broadcast_to(((np.arange(h) + 0.5) / h)[:, None], (h, w))
    base = [y, l, mean, std, grad]
    feats = [np.ones_like(l), *base] + [a * b for i, a in enumerate(base) for b in base[i:]]
    return np.stack([f.ravel() for f in feats], 1)


def _psnr_with_ab(lab: np.ndarray, ab: np.ndarray) -> float:
    truth = (lab2rgb(lab) * 255.0 + 0.5).astype(np.uint8).astype(np.float64)
    guess_lab = np.concatenate([lab[..., :1], np.broadcast_to(ab, lab.shape[:2] + (2,))], -1)
    guess = (np.clip(lab2rgb(guess_lab), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).astype(np.float64)
    return float(10.0 * np.log10(255.0**2 / np.mean((truth - guess) ** 2)))


@pytest.mark.filterwarnings("ignore:Conversion from CIE-LAB")
@pytest.mark.parametrize("seed", [0, 1])
def test_colours_are_learnable_from_gray_but_not_by_a_constant(seed):
    labs = [rgb2lab(synthetic.render_scene(np.random.default_rng([seed, i]), 64, 64)) for i in range(80)]
    train, test = labs[:40], labs[40:]
    x = np.concatenate([_gray_features(lab[..., 0]) for lab in train])
    y = np.concatenate([lab[..., 1:].reshape(-1, 2) for lab in train])
    weights = np.linalg.solve(x.T @ x + 1e-3 * np.eye(x.shape[1]), x.T @ y)
    constant = y.mean(0)

    gray = np.mean([_psnr_with_ab(lab, np.zeros(2)) for lab in test])
    const = np.mean([_psnr_with_ab(lab, constant) for lab in test])
    learned = np.mean([
        _psnr_with_ab(lab, (_gray_features(lab[..., 0]) @ weights).reshape(lab.shape[:2] + (2,)))
        for lab in test
    ])
    assert learned - gray >= 3.0, (gray, const, learned)
    assert const - gray < 0.5, (gray, const, learned)


def test_cli_writes_images_and_says_where(tmp_path, capsys):
    out = tmp_path / "cli"
    assert synthetic.main(["--output_dir", str(out), "--num_images", "3", "--size", "32", "--seed", "2"]) == 0
    assert "3" in capsys.readouterr().out
    assert len([f for _, _, files in os.walk(out) for f in files]) == 3


def test_cli_runs_as_a_module(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "components.synthetic", "--output_dir", str(tmp_path), "--num_images", "2",
         "--size", "24"], cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert str(tmp_path) in done.stdout


@pytest.mark.parametrize("count", ["0", "-3"])
def test_cli_rejects_a_non_positive_count_in_one_sentence(tmp_path, capsys, count):
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--output_dir", str(tmp_path), "--num_images", count])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--num_images" in err and "Traceback" not in err
    assert not os.listdir(tmp_path)
