"""Ingest benchmark: the Beam example_gen job against raw JPEG decoding and against the report's way.

What it measures, on LFW-like synthetic JPEGs (250x250, the project's own
generator, seed 0, no PNGs) at each --sizes value, each method run as its own
subprocess, alternating the methods within each repetition (the order rotates
from one repetition to the next), median over --repeats:

- raw: the physical floor. Decode every file with Pillow (`Image.open`,
  `load()`), nothing else, in a multiprocessing Pool of --workers processes
  (chunked): the same files on the same cores the pipeline gets.
- pipeline: the project's ingest job, exactly as a user runs it
  (fresh --output_dir each time, deleted afterwards):
      python -m components.example_gen --data_dir synthetic=DIR --output_dir OUT \\
          --runner=DirectRunner --direct_num_workers=W \\
          --direct_running_mode=multi_processing --validation none
  (decode, centre-crop to 250, sRGB->LAB codes, uncompressed TFRecords of
  the raw codes split three ways (their bytes on disk are recorded),
  statistics, dead letters, schema).
- report: the report's way, one process as the report did it: per file PIL
  open, convert RGB, resize the shorter side to 270, centre-crop 224x224,
  append the uint8 array to a Python list; then one numpy array; then
  skimage.color.rgb2lab per image into a preallocated [N,224,224,3] array,
  everything held in memory at the end as the report's `model.fit(x, y)` on
  one array needed. The report held LAB as float64; this holds float32
  (half the memory) so it fits at 20,000 images on a 24 GiB machine: its
  memory here is a LOWER bound on the report's (which also built separate
  X and Y arrays for fit).

Throughput is images per second over the whole subprocess wall time,
interpreter start-up and imports included (the pipeline's includes importing
TensorFlow and Beam and starting its worker processes: it dominates at small
sizes). Before the timed runs every file is read once (page cache warm) and
each method runs once, untimed, on a 50-image set. Peak memory is the peak,
sampled every 50 ms, of the summed resident memory (VmRSS) of the subprocess
and all its descendants (benchmarks/measure.py); summed RSS counts pages
shared between worker processes once per process, so for raw and pipeline it
is an upper bound. "cores" is (user+system CPU s) / wall s of the subprocess
tree: how many of the machine's cores the method kept busy.

Run (from the repository root; the full run is long, use a quiet machine):

    python -m benchmarks.ingest_benchmark --sizes 2000 20000 --repeats 3 \\
        --workdir /tmp/ingest_bench --workers 2

It prints a table, the memory growth between the smallest and largest size,
and as its last line the headline; the same results go to
<workdir>/ingest_benchmark.json. If the report's way runs out of memory
(MemoryError, or killed by the OOM killer) that is recorded in the table,
and it is not run again at that size or larger ones.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from benchmarks.measure import (
    child_env,
    emit_result,
    failure_reason,
    median,
    parse_result,
    print_table,
    machine_info,
    run_measured,
    usable_cores,
    write_results,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ("raw", "pipeline", "report")
SEED = 0
IMAGE_SIDE = 250  # LFW
REPORT_RESIZE = 270  # the report resized the shorter side to about 270 ...
REPORT_CROP = 224  # ... then centre-cropped 224x224
REPORT_MIN_SIDE = 250  # and dropped images with a side under 250
WARMUP_IMAGES = 50
DATA_MARKER = ".benchmark_data.json"
MIB = 1024 * 1024


def list_images(data_dir: str) -> list[str]:
    """Every .jpg/.jpeg under `data_dir`, sorted."""
    out = []
    for root, _dirs, files in os.walk(data_dir):
        out.extend(os.path.join(root, f) for f in files if f.lower().endswith((".jpg", ".jpeg")))
    return sorted(out)


# ---------------------------------------------------------------- child processes (the measured work)


def _decode_chunk(paths: list[str]) -> tuple[int, int]:
    from PIL import Image

    n = pixels = 0
    for path in paths:
        with Image.open(path) as im:
            im.load()
            pixels += im.size[0] * im.size[1]
        n += 1
    return n, pixels


def child_raw(data_dir: str, workers: int) -> dict:
    """Decode every JPEG with Pillow in a Pool of `workers` processes; nothing else."""
    t0 = time.perf_counter()
    files = list_images(data_dir)
    chunk = max(1, min(256, len(files) // (workers * 16) or 1))
    chunks = [files[i : i + chunk] for i in range(0, len(files), chunk)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        counts = pool.map(_decode_chunk, chunks, chunksize=1)
    return {
        "images": sum(n for n, _ in counts),
        "pixels": sum(p for _, p in counts),
        "inner_s": time.perf_counter() - t0,
    }


def _report_load(path: str):
    """The report's per-image preprocessing: RGB, shorter side to 270, centre crop 224; None if too small."""
    import numpy as np
    from PIL import Image

    im = Image.open(path).convert("RGB")
    w, h = im.size
    if min(w, h) < REPORT_MIN_SIDE:
        return None
    scale = REPORT_RESIZE / min(w, h)
    nw, nh = max(REPORT_CROP, round(w * scale)), max(REPORT_CROP, round(h * scale))
    im = im.resize((nw, nh))
    left, top = (nw - REPORT_CROP) // 2, (nh - REPORT_CROP) // 2
    im = im.crop((left, top, left + REPORT_CROP, top + REPORT_CROP))
    return np.array(im, dtype=np.uint8)


def child_report(data_dir: str) -> dict:
    """The report's way, one process: every image into one array, then LAB for all of them, all kept in memory."""
    t0 = time.perf_counter()
    import numpy as np
    from skimage.color import rgb2lab

    files = list_images(data_dir)
    images = []
    for path in files:
        arr = _report_load(path)
        if arr is not None:
            images.append(arr)
    t_load = time.perf_counter()
    rgb = np.array(images)  # [N,224,224,3] uint8
    del images  # the report rebound the name: the list goes once the array exists
    n = len(rgb)
    # The report held float64; float32 halves it so 20,000 images fit in 24 GiB.
    lab = np.empty((n, REPORT_CROP, REPORT_CROP, 3), dtype=np.float32)
    for i in range(n):
        lab[i] = rgb2lab(rgb[i])
    t_lab = time.perf_counter()
    # Everything is still referenced here, as it was when the report called model.fit on it.
    return {
        "images": n,
        "rgb_bytes": int(rgb.nbytes),
        "lab_bytes": int(lab.nbytes),
        "lab_dtype": str(lab.dtype),
        "lab_bytes_as_float64": int(lab.nbytes * 2),
        "mean_L": float(lab[..., 0].mean()) if n else None,
        "load_s": t_load - t0,
        "lab_s": t_lab - t_load,
        "inner_s": time.perf_counter() - t0,
    }


def _child_main(args: argparse.Namespace) -> int:
    if args.child == "raw":
        result = child_raw(args.data, args.workers)
    else:
        try:
            result = child_report(args.data)
        except MemoryError:
            emit_result({"error": "MemoryError"})
            return 3
    emit_result(result)
    return 0


# ---------------------------------------------------------------- the driver


def ensure_data(workdir: Path, num_images: int) -> str:
    """LFW-like JPEGs under workdir, generated once and reused when already there with the right count."""
    from components.synthetic import generate

    data_dir = workdir / f"lfw_like_{num_images}"
    wanted = {"num_images": num_images, "seed": SEED, "size": IMAGE_SIDE, "png_fraction": 0.0}
    marker = data_dir / DATA_MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()) == wanted and len(list_images(str(data_dir))) == num_images:
                print(f"data: reusing {num_images} images in {data_dir}", flush=True)
                return str(data_dir)
        except (OSError, ValueError):
            pass
    if data_dir.exists():
        shutil.rmtree(data_dir)
    t0 = time.perf_counter()
    print(f"data: generating {num_images} LFW-like {IMAGE_SIDE}x{IMAGE_SIDE} JPEGs in {data_dir} ...", flush=True)
    paths = generate(str(data_dir), num_images, seed=SEED, size=IMAGE_SIDE, png_fraction=0.0, workers=2)
    if len(paths) != num_images:
        raise RuntimeError(f"generator wrote {len(paths)} files, expected {num_images}")
    marker.write_text(json.dumps(wanted))
    print(f"data: done in {time.perf_counter() - t0:.1f} s", flush=True)
    return str(data_dir)


def _warm_page_cache(data_dir: str) -> int:
    total = 0
    for path in list_images(data_dir):
        with open(path, "rb") as f:
            total += len(f.read())
    return total


def run_method(method: str, data_dir: str, num_images: int, workdir: Path, workers: int, tag: str,
               timeout: float | None) -> dict:
    """Run one method once as a measured subprocess; return a JSON-able record."""
    py = sys.executable
    out_dir = None
    if method == "raw":
        cmd = [py, "-m", "benchmarks.ingest_benchmark", "--child", "raw", "--data", data_dir, "--workers", str(workers)]
    elif method == "report":
        cmd = [py, "-m", "benchmarks.ingest_benchmark", "--child", "report", "--data", data_dir]
    elif method == "pipeline":
        out_dir = workdir / f"pipeline_out_{tag}"
        if out_dir.exists():
            shutil.rmtree(out_dir)
        cmd = [py, "-m", "components.example_gen", "--data_dir", f"synthetic={data_dir}",
               "--output_dir", str(out_dir), "--runner=DirectRunner", f"--direct_num_workers={workers}",
               "--direct_running_mode=multi_processing", "--validation", "none"]
    else:
        raise ValueError(method)
    m = run_measured(cmd, cwd=str(REPO_ROOT), env=child_env(REPO_ROOT), timeout=timeout)
    result = parse_result(m)
    if method == "pipeline" and out_dir is not None:
        try:
            stats = json.loads((out_dir / "statistics" / "statistics.json").read_text())
            result = {k: stats["files"][k] for k in ("found", "written", "rejected", "duplicates")}
            result["examples_bytes"] = sum(p.stat().st_size for p in (out_dir / "examples").rglob("*") if p.is_file())
        except (OSError, ValueError, KeyError):
            result = None
        shutil.rmtree(out_dir, ignore_errors=True)
    failure = failure_reason(m, result)
    record = {
        "method": method,
        "images": num_images,
        "ok": failure is None,
        "failure": failure,
        "wall_s": round(m.wall_s, 3),
        "images_per_s": round(num_images / m.wall_s, 2) if failure is None else None,
        "peak_rss_bytes": m.peak_rss_bytes,
        "ru_maxrss_bytes": m.ru_maxrss_bytes,
        "cpu_s": round(m.cpu_s, 2) if m.cpu_s is not None else None,
        "cores_used": round(m.cpu_s / m.wall_s, 2) if m.cpu_s is not None and m.wall_s > 0 else None,
        "rss_samples": m.samples,
        "child": result,
        "command": cmd,
    }
    if failure is not None:
        record["stdout_tail"] = m.stdout_tail[-1500:]
    return record


def _fmt(x, spec: str, empty: str = "-") -> str:
    return empty if x is None else format(x, spec)


def summarize(runs: list[dict], sizes: list[int]) -> dict:
    """Medians per (size, method) over successful runs, and the ratios."""
    summary: dict = {}
    for size in sizes:
        per = {}
        for method in METHODS:
            rs = [r for r in runs if r["images"] == size and r["method"] == method]
            good = [r for r in rs if r["ok"]]
            failures = sorted({r["failure"] for r in rs if not r["ok"]})
            per[method] = {
                "runs": len(rs),
                "ok_runs": len(good),
                "failures": failures,
                "images_per_s": median(r["images_per_s"] for r in good),
                "wall_s": median(r["wall_s"] for r in good),
                "peak_rss_bytes": median(r["peak_rss_bytes"] for r in good),
                "cores_used": median(r["cores_used"] for r in good),
            }
        raw_ips = per["raw"]["images_per_s"]
        rep_ips = per["report"]["images_per_s"]
        for method in METHODS:
            ips = per[method]["images_per_s"]
            per[method]["ratio_to_raw"] = ips / raw_ips if ips and raw_ips else None
        pipe_ips = per["pipeline"]["images_per_s"]
        per["pipeline"]["ratio_to_report"] = pipe_ips / rep_ips if pipe_ips and rep_ips else None
        summary[str(size)] = per
    return summary


def memory_growth(summary: dict, sizes: list[int]) -> dict:
    small, large = str(min(sizes)), str(max(sizes))
    growth = {}
    for method in METHODS:
        a, b = summary[small][method]["peak_rss_bytes"], summary[large][method]["peak_rss_bytes"]
        growth[method] = b / a if a and b else None
    return growth


def print_results(summary: dict, sizes: list[int], workers: int) -> None:
    headers = ["size", "method", "images/s", "wall s", "peak RSS MiB", "cores", "x raw", "pipeline/report"]
    rows = []
    for size in sizes:
        for method in METHODS:
            s = summary[str(size)][method]
            if s["runs"] == 0:
                rows.append([size, method, "not run (--methods)", "-", "-", "-", "-", "-"])
                continue
            if s["ok_runs"] == 0:
                why = "; ".join(s["failures"]) or "not run"
                rows.append([size, method, f"FAILED: {why}", "-", "-", "-", "-", "-"])
                continue
            note = f" ({s['ok_runs']}/{s['runs']} ok)" if s["ok_runs"] < s["runs"] else ""
            rows.append([
                size,
                method + note,
                _fmt(s["images_per_s"], ".1f"),
                _fmt(s["wall_s"], ".2f"),
                _fmt(s["peak_rss_bytes"] / MIB if s["peak_rss_bytes"] else None, ".0f"),
                _fmt(s["cores_used"], ".2f"),
                _fmt(s["ratio_to_raw"], ".2f"),
                _fmt(s.get("ratio_to_report"), ".2f") if method == "pipeline" else "",
            ])
    print_table(headers, rows)


def headline(summary: dict, growth: dict, sizes: list[int], workers: int, cores: int) -> str:
    large = str(max(sizes))
    s = summary[large]
    pipe, rep = s["pipeline"], s["report"]
    if pipe["images_per_s"] is None:
        speed = f"pipeline FAILED at {large} images ({'; '.join(pipe['failures'])})"
    else:
        speed = f"pipeline {pipe['images_per_s']:.0f} img/s at {large} images"
        speed += f" = {pipe['ratio_to_raw']:.2f} of raw decode" if pipe["ratio_to_raw"] else ", raw decode failed"
        if pipe.get("ratio_to_report"):
            speed += f", {pipe['ratio_to_report']:.1f}x the report's way"
        elif rep["runs"] == 0:
            speed += ", the report's way not run"
        else:
            speed += f", the report's way failed ({'; '.join(rep['failures']) or 'not run'})"
    mem = f"memory {min(sizes)}->{max(sizes)}: pipeline " + (
        f"x{growth['pipeline']:.2f}" if growth["pipeline"] else "n/a"
    ) + ", report " + (f"x{growth['report']:.1f}" if growth["report"] else "n/a")
    return (f"headline: {speed}; {mem} ({workers} worker processes for raw and pipeline, "
            f"1 for the report's way, on {cores} cores)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest_benchmark",
        description="Ingest throughput and peak memory: raw Pillow decoding vs the example_gen Beam job vs the "
        "report's load-everything-into-numpy way, at several data sizes.",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000], help="numbers of images (default 2000 20000)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per size and method; median quoted (default 3)")
    parser.add_argument("--workdir", default="/tmp/ingest_bench", help="data, scratch output and the JSON (default /tmp/ingest_bench)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for raw and pipeline (default 2)")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds before one run is killed (default 14400)")
    parser.add_argument("--no_warmup", action="store_true", help="skip the untimed warm-up runs")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="which methods to run (default all; the report's way takes minutes at 20,000 images)")
    parser.add_argument("--child", choices=("raw", "report"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child_main(args)

    sizes = sorted(set(args.sizes))
    if any(n < 1 for n in sizes) or args.repeats < 1 or args.workers < 1:
        parser.error("--sizes, --repeats and --workers must be positive")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    usable = usable_cores()

    data = {n: ensure_data(workdir, n) for n in sizes}
    for n in sizes:
        _warm_page_cache(data[n])
    if not args.no_warmup:
        warm_dir = ensure_data(workdir, WARMUP_IMAGES)
        _warm_page_cache(warm_dir)
        for method in args.methods:
            r = run_method(method, warm_dir, WARMUP_IMAGES, workdir, args.workers, "warmup", args.timeout)
            print(f"warm-up {method}: {r['wall_s']:.1f} s" + ("" if r["ok"] else f" FAILED: {r['failure']}"), flush=True)

    runs: list[dict] = []
    report_broken_at: int | None = None
    for n in sizes:
        for rep in range(args.repeats):
            order = METHODS[rep % len(METHODS):] + METHODS[: rep % len(METHODS)]
            for method in (m for m in order if m in args.methods):
                if method == "report" and report_broken_at is not None:
                    runs.append({"method": method, "images": n, "repeat": rep, "ok": False,
                                 "failure": f"not run (ran out of memory at {report_broken_at})",
                                 "images_per_s": None, "wall_s": None, "peak_rss_bytes": None, "cores_used": None})
                    continue
                r = run_method(method, data[n], n, workdir, args.workers, f"{n}_{rep}", args.timeout)
                r["repeat"] = rep
                runs.append(r)
                status = "ok" if r["ok"] else f"FAILED: {r['failure']}"
                print(f"size {n} rep {rep + 1}/{args.repeats} {method:8s}: {r['wall_s']:8.2f} s, "
                      f"{_fmt(r['images_per_s'], '.1f')} img/s, peak RSS {r['peak_rss_bytes'] / MIB:.0f} MiB, "
                      f"cores {_fmt(r['cores_used'], '.2f')} [{status}]", flush=True)
                if not r["ok"] and r.get("stdout_tail"):
                    last = [ln for ln in r["stdout_tail"].splitlines() if ln.strip()][-1:]
                    print(f"    {method} said: {last[0][:300] if last else '(nothing)'}", flush=True)
                if method == "report" and r["failure"] and ("Memory" in r["failure"] or "signal 9" in r["failure"]):
                    report_broken_at = n

    summary = summarize(runs, sizes)
    growth = memory_growth(summary, sizes)
    line = headline(summary, growth, sizes, args.workers, usable)

    print()
    print(f"Ingest of LFW-like {IMAGE_SIDE}x{IMAGE_SIDE} JPEGs; median of {args.repeats} run(s); machine: "
          f"{usable} usable cores ({cores} total), {platform.machine()}, Python {platform.python_version()}.")
    print(f"raw and pipeline use {args.workers} worker processes; the report's way is one process. images/s = "
          "images / whole subprocess wall time, start-up and imports included.")
    print("The report's way keeps LAB as float32 (the report held float64, twice this): its memory is a lower "
          "bound on the report's. Peak RSS = peak of summed VmRSS over the process tree (shared pages counted "
          "once per process).")
    print()
    print_results(summary, sizes, args.workers)
    print()
    small, large = min(sizes), max(sizes)
    print(f"memory growth {small}->{large} images (x{large / small:g} data): "
          + ", ".join(f"{m} x{g:.2f}" if g else f"{m} n/a" for m, g in growth.items()))
    for m in ("pipeline", "report"):
        g = growth[m]
        if g:
            print(f"  {m}: peak RSS {summary[str(small)][m]['peak_rss_bytes'] / MIB:.0f} MiB -> "
                  f"{summary[str(large)][m]['peak_rss_bytes'] / MIB:.0f} MiB")
    rep_large = summary[str(large)]["report"]
    if rep_large["ok_runs"]:
        lab_gib = large * REPORT_CROP * REPORT_CROP * 3 * 8 / 2**30
        print(f"  (the report's float64 LAB alone would be {lab_gib:.1f} GiB at {large} images)")

    out = {
        "benchmark": "ingest",
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.ingest_benchmark", "--sizes",
                             *map(str, sizes), "--repeats", str(args.repeats), "--workdir", str(workdir),
                             "--workers", str(args.workers), "--methods", *args.methods]),
        "machine": machine_info(),
        "config": {"sizes": sizes, "repeats": args.repeats, "workers": args.workers, "seed": SEED,
                   "image_side": IMAGE_SIDE, "png_fraction": 0.0, "report_lab_dtype": "float32",
                   "throughput": "images / whole subprocess wall time, start-up included",
                   "memory": "peak of summed VmRSS over the subprocess tree, sampled every 50 ms"},
        "summary": summary,
        "memory_growth": {"from": small, "to": large, **growth},
        "runs": runs,
        "headline": line,
    }
    write_results(workdir / "ingest_benchmark.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
