"""Loader benchmark: the training input pipeline per core, its stages, and the stored encoding's alternatives.

Three measurements, each in its own subprocess (this module re-run with a
hidden --child mode), on records the project's ingest job wrote from
LFW-like synthetic JPEGs (250x250 stored, one split; the training
benchmark's data, made once under --workdir and reused):

1. Scaling with cores. Examples/s of `loader.make_dataset(training=True,
   repeat=True)` at --image_size, --batch_size, iterated with no model after
   20 warm-up batches, for each --cores value N: the child is pinned to N
   cores with `taskset` and TensorFlow is told N (intra- and inter-op
   threads, and the dataset's private thread pool). Per core = examples/s / N.
2. Per-core cost of each stage, one core, one thread: cumulative tf.data
   pipelines over the same records held in memory (parse per record, +
   decode of the stored raw codes, + random crop and flip, + scaling: L and
   ab / 128 from the codes, then batch); a stage's cost is the difference
   between consecutive pipelines, in microseconds per example. Reading the
   TFRecord files is measured alone. Alternatives timed the same way:
   schema version 1's loader's parse (batch, one vectorised parse, unbatch)
   and its scaling (dequantise all three channels, then split), and scaling
   a whole batch of codes at once.
3. The stored encoding's alternatives: the same images (the stored LAB
   codes) written as records holding a PNG (schema version 1's encoding,
   by its own encoder), the raw 8-bit codes in GZIP TFRecords, and the raw
   codes uncompressed (schema version 2, what ingest writes); bytes per
   record on disk and examples/s on one core of read + parse + decode (the
   rest of the loader does not depend on the encoding).

Run (from the repository root; a quiet machine):

    python -m benchmarks.loader_benchmark --images 2000 --cores 1 2 --image_size 224 \\
        --batch_size 48 --workdir /tmp/loader_bench

It prints the three tables and, last, the headline; the results go to
<workdir>/loader_benchmark.json too.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
import zlib
from pathlib import Path

from benchmarks.ingest_benchmark import ensure_data
from benchmarks.measure import (
    child_env,
    emit_result,
    failure_reason,
    machine_info,
    parse_result,
    print_table,
    run_measured,
    usable_cores,
    write_results,
)
from benchmarks.training_benchmark import LOADER_WARMUP_BATCHES, SEED, ensure_examples

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_PER_CORE = 1000.0  # examples/s per core at 224: what a GPU host's 8-16 cores per device must each feed
FORMATS = ("png", "raw_gzip", "raw")


def v1_png(codes) -> bytes:
    """Schema version 1's stored image: a lossless PNG of uint8 [H, W, 3] codes, as its ingest wrote it.

    Every row uses PNG's 'Up' filter and the stream is deflated by ISA-L at
    level 1 (about 8x faster than Pillow's adaptive filtering at a similar
    size). Kept here only to compare the encodings by their numbers.
    """
    import numpy as np
    from isal import isal_zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    height, width, _ = codes.shape
    rows = np.ascontiguousarray(codes, np.uint8).reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)
    filtered[:, 0] = 2  # PNG filter type 'Up'
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"".join((b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", header),
                     chunk(b"IDAT", isal_zlib.compress(filtered.tobytes(), 1)), chunk(b"IEND", b"")))


# ---------------------------------------------------------------- child processes (the measured work)


def limit_threads(cores: int):
    """TensorFlow told to use `cores` threads; returns tf.data Options with the same private thread pool."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cores)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    return options


def loader_rate(examples: str, image_size: int, batch_size: int, batches: int, cores: int) -> dict:
    """examples/s of the training loader alone on `cores` threads, after LOADER_WARMUP_BATCHES."""
    options = limit_threads(cores)
    from components import loader

    ds = loader.make_dataset(examples, "train", image_size=image_size, batch_size=batch_size, training=True,
                             repeat=True, seed=SEED).with_options(options)
    it = iter(ds)
    for _ in range(LOADER_WARMUP_BATCHES):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - t0
    return {"cores": cores, "affinity": len(os.sched_getaffinity(0)), "examples": batches * batch_size,
            "seconds": seconds, "examples_per_s": batches * batch_size / seconds,
            "seconds_per_batch": seconds / batches}


PASSES = 5


def _time_datasets(datasets: dict, passes: int = PASSES) -> dict:
    """Best of `passes` full iterations of each dataset, in seconds; the datasets take turns in every pass, so a
    busy moment of the machine does not fall on one of them only."""
    best = {name: float("inf") for name in datasets}
    for _ in range(passes):
        for name, ds in datasets.items():
            t0 = time.perf_counter()
            for _ in ds:
                pass
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def child_stages(examples: str, image_size: int, batch_size: int, workdir: str) -> dict:
    """One core, one thread: per-example cost of each loader stage, and of each stored encoding."""
    options = limit_threads(1)
    import numpy as np
    import tensorflow as tf

    import schemas
    from components import loader

    files = loader.example_files(examples, "train")
    compression = loader._compression(files[0])
    records = list(tf.data.TFRecordDataset(files, compression_type=compression).as_numpy_iterator())
    n = len(records)

    def parsed():
        return tf.data.Dataset.from_tensor_slices(records).map(lambda s: loader._parse(s, False))

    def parsed_in_batches():  # version 1's loader: one vectorised parse of every feature per batch, then unbatch
        names = {schemas.IMAGE_KEY: "lab_codes", schemas.HEIGHT_KEY: "height", schemas.WIDTH_KEY: "width"}
        return tf.data.Dataset.from_tensor_slices(records).batch(batch_size).map(
            lambda s: {names[k]: v for k, v in schemas.parse_examples(s).items() if k in names}).unbatch()

    def decode(f):  # as loader._to_model_io does first
        return schemas.decode_codes(f["lab_codes"], f["height"], f["width"])

    def crop_flip(ds):  # as the loader does: each record keyed by its own seed from a seeded stream
        return tf.data.Dataset.zip(ds, loader.crop_seeds(SEED)).map(
            lambda codes, key: loader.random_crop_flip(codes, image_size, key))

    def scale_v1(codes):  # schema version 1's loader: dequantise all three channels, then split the floats
        lab = schemas.dequantize_lab(codes)
        return lab[..., :1], lab[..., 1:] / schemas.AB_SCALE

    pipelines = {
        "parse": parsed(),
        "decode": parsed().map(decode),
        "crop_flip": crop_flip(parsed().map(decode)),
        "scaling": crop_flip(parsed().map(decode)).map(schemas.codes_to_l_ab).batch(batch_size),
    }
    timed = {name: ds.with_options(options) for name, ds in pipelines.items()}
    # the alternatives: version 1's batched parse and its scaling per image, and scaling a whole batch at once
    timed["v1_parse"] = parsed_in_batches().with_options(options)
    timed["v1_scaling"] = crop_flip(parsed().map(decode)).map(scale_v1).batch(batch_size).with_options(options)
    timed["per_batch"] = (crop_flip(parsed().map(decode)).batch(batch_size).map(schemas.codes_to_l_ab)
                          .with_options(options))
    timed["read"] = tf.data.TFRecordDataset(files, compression_type=compression).with_options(options)
    seconds = _time_datasets(timed)
    stages_us, previous = {}, 0.0
    for name in pipelines:
        stages_us[name] = (seconds[name] - previous) / n * 1e6
        previous = seconds[name]
    parse_v1_us = seconds["v1_parse"] / n * 1e6
    scaling_v1_us = (seconds["v1_scaling"] - seconds["crop_flip"]) / n * 1e6
    scaling_per_batch_us = (seconds["per_batch"] - seconds["crop_flip"]) / n * 1e6
    stages_us["read"] = seconds["read"] / n * 1e6
    full_us = seconds["scaling"] / n * 1e6 + stages_us["read"]

    # the alternatives: the same stored codes, three encodings
    spec = {schemas.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)}
    codes = [c.numpy() for c in parsed().map(decode)]
    side = codes[0].shape[0]
    formats, readers, paths = {}, {}, {}
    for fmt in FORMATS:
        path = paths[fmt] = os.path.join(workdir, f"format_{fmt}.tfrecord" + (".gz" if fmt == "raw_gzip" else ""))
        compression = "GZIP" if fmt == "raw_gzip" else ""
        with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type=compression)) as writer:
            for c, record in zip(codes, records):
                example = tf.train.Example.FromString(record)  # the raw records as written, or with the PNG
                if fmt == "png":
                    example.features.feature[schemas.IMAGE_KEY].bytes_list.value[0] = v1_png(c)
                writer.write(example.SerializeToString())
        if fmt == "png":
            decoder = lambda b: tf.io.decode_png(b, channels=3, dtype=tf.uint8)  # noqa: E731
        else:
            decoder = lambda b: tf.reshape(tf.io.decode_raw(b, tf.uint8), [side, side, 3])  # noqa: E731
        readers[fmt] = (tf.data.TFRecordDataset(path, compression_type=compression).batch(batch_size)
                        .map(lambda s: tf.io.parse_example(s, spec)[schemas.IMAGE_KEY]).unbatch().map(decoder)
                        .with_options(options))
    seconds = _time_datasets(readers)
    for fmt in FORMATS:
        check = next(iter(readers[fmt])).numpy()
        formats[fmt] = {"bytes_per_record": os.path.getsize(paths[fmt]) / n, "examples_per_s_one_core": n / seconds[fmt],
                        "us_per_example": seconds[fmt] / n * 1e6, "round_trip_exact": bool(np.array_equal(check, codes[0]))}
        os.remove(paths[fmt])
    return {"records": n, "stored_side": side, "compression": compression or "none", "stages_us": stages_us,
            "full_us": full_us, "parse_v1_us": parse_v1_us, "scaling_v1_us": scaling_v1_us, "scaling_per_batch_us": scaling_per_batch_us,
            "one_core_examples_per_s": 1e6 / full_us, "formats": formats}


def _child_main(args: argparse.Namespace) -> int:
    if args.child == "loader":
        result = loader_rate(args.examples, args.image_size, args.batch_size, args.batches, args.child_cores)
    else:
        result = child_stages(args.examples, args.image_size, args.batch_size, args.workdir)
    emit_result(result)
    return 0


# ---------------------------------------------------------------- the driver


def pinned(cores: int) -> list[str]:
    """`taskset` onto the first `cores` cores this process may use."""
    allowed = sorted(os.sched_getaffinity(0))[:cores]
    return ["taskset", "-c", ",".join(map(str, allowed))]


def run_child(child_args: list[str], cores: int, timeout: float) -> dict:
    cmd = pinned(cores) + [sys.executable, "-m", "benchmarks.loader_benchmark", "--child", *child_args]
    m = run_measured(cmd, cwd=str(REPO_ROOT), env=child_env(REPO_ROOT), timeout=timeout)
    result = parse_result(m)
    failure = failure_reason(m, result) or (None if result else "no result")
    if failure:
        tail = "\n".join(m.stdout_tail.splitlines()[-10:])
        raise RuntimeError(f"{' '.join(cmd)} failed ({failure}):\n{tail}")
    return {**result, "wall_s": round(m.wall_s, 1), "peak_rss_bytes": m.peak_rss_bytes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.loader_benchmark",
        description="The training loader's examples/s per core, the cost of each of its stages, and the stored "
        "encoding's alternatives (version 1's PNG, raw + GZIP, raw as version 2 stores it).",
    )
    parser.add_argument("--images", type=int, default=2000, help="records to ingest and read (default 2000)")
    parser.add_argument("--cores", type=int, nargs="+", default=None,
                        help="core counts to pin the loader to (default 1 2 ... up to this machine's usable cores)")
    parser.add_argument("--image_size", type=int, default=224, help="training crop side (default 224)")
    parser.add_argument("--batch_size", type=int, default=48, help="batch size (default 48)")
    parser.add_argument("--batches", type=int, default=60, help="timed batches per loader run (default 60)")
    parser.add_argument("--workdir", default="/tmp/loader_bench", help="data and the JSON (default /tmp/loader_bench)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before one child is killed")
    parser.add_argument("--child", choices=("loader", "stages"), help=argparse.SUPPRESS)
    parser.add_argument("--examples", help=argparse.SUPPRESS)
    parser.add_argument("--child_cores", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child_main(args)

    usable = usable_cores()
    cores = sorted(set(args.cores or range(1, usable + 1)))
    if any(c < 1 or c > usable for c in cores):
        parser.error(f"--cores must be between 1 and this machine's {usable} usable cores")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data = ensure_data(workdir, args.images)
    examples, records = ensure_examples(workdir, data, args.images, None, min(2, usable), args.timeout)
    common = ["--examples", examples, "--image_size", str(args.image_size), "--batch_size", str(args.batch_size),
              "--workdir", str(workdir)]

    scaling = []
    for n in cores:
        r = run_child(["loader", *common, "--batches", str(args.batches), "--child_cores", str(n)], n, args.timeout)
        print(f"loader on {n} core(s): {r['examples_per_s']:.0f} examples/s", flush=True)
        scaling.append(r)
    stages = run_child(["stages", *common], 1, args.timeout)

    print()
    print(f"Loader at {args.image_size}x{args.image_size} from {records} records stored at "
          f"{stages['stored_side']}x{stages['stored_side']}, batch {args.batch_size}; {usable} usable cores.")
    print()
    print_table(["cores", "examples/s", "per core", "ms per batch", f"x target {TARGET_PER_CORE:.0f}/core"],
                [[r["cores"], f"{r['examples_per_s']:.0f}", f"{r['examples_per_s'] / r['cores']:.0f}",
                  f"{r['seconds_per_batch'] * 1e3:.1f}", f"{r['examples_per_s'] / r['cores'] / TARGET_PER_CORE:.2f}"]
                 for r in scaling])
    print()
    us = stages["stages_us"]
    read = "read GZIP TFRecords" if stages["compression"] == "GZIP" else "read uncompressed TFRecords"
    names = {"read": read, "parse": "parse (per record)", "decode": "decode the stored raw codes",
             "crop_flip": "random crop + flip", "scaling": "scaling (L and ab/128 from the codes) + batch"}
    print_table(["stage (one core, one thread)", "us per example", "share"],
                [[names[k], f"{us[k]:.0f}", f"{us[k] / stages['full_us']:.0%}"] for k in names]
                + [["all", f"{stages['full_us']:.0f}", "100%"]])
    print(f"(as version 1's loader did: parse in batches and unbatch {stages['parse_v1_us']:.0f} us per example; "
          f"scaling by dequantising, then splitting {stages['scaling_v1_us']:.0f} us. Batching the 8-bit codes and "
          f"scaling a whole batch: {stages['scaling_per_batch_us']:.0f} us)")
    print()
    formats = stages["formats"]
    print_table(["stored encoding", "KiB per record", "examples/s, one core (read + parse + decode)", "exact"],
                [[fmt, f"{f['bytes_per_record'] / 1024:.1f}", f"{f['examples_per_s_one_core']:.0f}",
                  "yes" if f["round_trip_exact"] else "NO"] for fmt, f in formats.items()])
    best = max(scaling, key=lambda r: r["cores"])
    per_core = best["examples_per_s"] / best["cores"]
    bottleneck = max(("decode", "crop_flip", "scaling", "read", "parse"), key=lambda k: us[k])
    line = (f"headline: loader {per_core:.0f} examples/s per core at {args.image_size} on {best['cores']} core(s) "
            f"(target {TARGET_PER_CORE:.0f}); costliest stage: {names[bottleneck]} ({us[bottleneck]:.0f} us); "
            f"raw+GZIP records {formats['raw_gzip']['bytes_per_record'] / formats['png']['bytes_per_record']:.2f}x "
            f"the PNG size, decoded {formats['raw_gzip']['examples_per_s_one_core'] / formats['png']['examples_per_s_one_core']:.2f}x "
            f"as fast; raw {formats['raw']['bytes_per_record'] / formats['png']['bytes_per_record']:.2f}x, "
            f"{formats['raw']['examples_per_s_one_core'] / formats['png']['examples_per_s_one_core']:.2f}x")
    out = {"benchmark": "loader", "command": " ".join(["python", "-m", "benchmarks.loader_benchmark", *(argv or sys.argv[1:])]),
           "machine": machine_info(), "config": vars(args), "records": records, "scaling": scaling,
           "stages": stages, "headline": line}
    write_results(workdir / "loader_benchmark.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
