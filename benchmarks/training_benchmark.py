"""Training benchmark: the streaming loader, the report's numpy way, mixed precision and Model 2's split.

Five comparisons, side by side in one run. Every measurement is its own
subprocess (this module re-run with a hidden --child mode), the methods of a
section alternate within each repetition (the order rotates from one
repetition to the next, and the sections interleave too), and the median over
--repeats is quoted. Model 1 unless stated; weights are random everywhere
(weights=None: speed does not depend on their values); Keras's own threading
on all the machine's cores (the table says how many).

Data: LFW-like synthetic JPEGs (250x250, the project's own generator, seed 0,
no PNGs), ingested once by the project's Beam job (`run_ingest`, DirectRunner,
stored at 250x250, one split: --splits train=100, so every record is training
data) into --workdir, and reused by later runs. Section 3 needs a second set,
--scale times larger: --images*--scale JPEGs are generated, the large set is
all of them, the small one the job's --limit --images sample of them.

1. Loader alone. Examples/s of `loader.make_dataset(training=True,
   repeat=True)` (random crop and flip) iterated with no model, after 20
   warm-up batches, against what training consumes: examples/s of a Model 1
   float32 train step (`train_on_batch` on an in-memory batch) at the same
   --image_size and --batch_size (the same runs as section 4's float32).
   Ratio loader / training; the issue's target: at least 3x.
2. Training throughput through the loader: `model.fit(make_dataset(...),
   steps_per_epoch=...)` against the report's way: every record loaded into
   numpy L and ab arrays first (centre crop, float32 [N,S,S,1] and [N,S,S,2],
   preallocated), then `model.fit(x, y, batch_size)`. Both fits are timed
   per batch (a callback's clock at each batch end): the first --warmup
   batches of the fit (tracing, filling the input pipeline) are left out, the
   next --steps are timed, then training stops. Ratio loader / numpy; target:
   no slower (>= 0.95).
3. Peak resident memory (the OS's VmRSS, sampled every 50 ms over the child
   process, benchmarks/measure.py) of training on --images records and on
   --images*--scale records, each way: the loader streams, the numpy way
   loads every record into memory first (float32, preallocated: a lower
   bound on the report's float64 lists); then 1 + --mem_steps train steps at
   --mem_image_size. Ratio large/small per way; target: the loader flat
   (< 1.2), the report's way grows with the data. The loader's own bound is
   its shuffle buffer of 1,024 serialized records (about 80 KiB each at
   250x250), full from 1,024 records on: from 500 to 5,000 records it still
   rises by about 40 MiB, then no more.
4. float32 against mixed_bfloat16 (keras.mixed_precision.set_global_policy
   before building) train-step throughput of Model 1 on in-memory synthetic
   batches, --warmup untimed steps then --loop_steps timed. Speedup
   bf16 / f32. Without avx512_bf16/amx_bf16 in /proc/cpuinfo oneDNN emulates
   bfloat16 and it is slower; the table says which this CPU is.
5. Model 2 (random weights; each --backbones value): train-step throughput of
   the end-to-end model (L in, the frozen backbone's forward pass every step)
   against the head alone on precomputed embeddings (random 1000-vectors of
   the right shape: the head's cost does not depend on their values; the head
   does not depend on the backbone, so one head measurement serves every
   backbone). Speedup head / end-to-end. The one-off cost of computing the
   embeddings (one backbone forward pass per record) is not included.

Run (from the repository root, on a quiet machine):

    python -m benchmarks.training_benchmark --images 500 --scale 10 --image_size 224 \\
        --batch_size 16 --steps 5 --repeats 3 --workdir /tmp/train_bench

(the defaults). Expected runtime on an idle 2-core x86-64 machine (AVX-512,
no native bf16): about 30 minutes, plus about 3 minutes the first time to
generate 5,000 JPEGs and ingest 500 and 5,000 of them. Per repetition,
roughly: sections 1 and 4 three minutes (Model 1 at 224x224, batch 16, costs
about 6 s a float32 train step on 2 cores and about 3.5 times that in
emulated bfloat16), section 2 two, section 3 two and a half, section 5 three
(inception_resnet_v2's forward pass at 299x299 adds about 4 s a step). That
is why --steps is 5 and --loop_steps 3 rather than more: each step is
seconds long, so a few of them time it well; each run also pays about 10 s
of start-up (TensorFlow import, model build), which is not timed.
`--quick` (--images 100 --scale 5 --image_size 64 --batch_size 8 --steps 3
--loop_steps 2 --warmup 2 --loader_batches 40 --mem_steps 1 --repeats 1
--backbones mobilenet_v2) checks the whole thing end to end in about 5
minutes; its figures are not the benchmark's (at 64x64 and 500 records the
report's arrays are too small to show its memory growth). `--sections`
runs a subset (section 1 also runs section 4's float32 step).

It prints one table per section and, as its last line, a headline with every
ratio; the same results go to <workdir>/training_benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.ingest_benchmark import ensure_data
from benchmarks.measure import (
    child_env,
    emit_result,
    failure_reason,
    machine_info,
    median,
    parse_result,
    print_table,
    run_measured,
    usable_cores,
    write_results,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = 0
STORED_SIZE = 250  # example_gen's default; LFW-like JPEGs are 250x250
SPLITS = (("train", 100),)
EXAMPLES_MARKER = ".benchmark_examples.json"
LOADER_WARMUP_BATCHES = 20
SECTIONS = (1, 2, 3, 4, 5)
BACKBONES = ("mobilenet_v2", "inception_resnet_v2")
MIB = 1024 * 1024

DEFAULTS = dict(images=500, scale=10, image_size=224, batch_size=16, steps=5, loop_steps=3, warmup=2,
                loader_batches=150, mem_image_size=None, mem_steps=2, repeats=3, backbones=list(BACKBONES))
QUICK = dict(images=100, scale=5, image_size=64, batch_size=8, steps=3, loop_steps=2, warmup=2,
             loader_batches=40, mem_image_size=None, mem_steps=1, repeats=1, backbones=["mobilenet_v2"])
TARGETS = {"loader_vs_training": 3.0, "fit_loader_vs_numpy": 0.95, "loader_memory_growth": 1.2}


# ---------------------------------------------------------------- child processes (the measured work)


def _records(examples: str) -> int:
    """How many records example_gen wrote into the train split of `examples`."""
    from schemas.artifacts import STATISTICS_FILE

    with open(os.path.join(examples, STATISTICS_FILE)) as f:
        return int(json.load(f)["splits"]["train"]["count"])


def child_ingest(data: str, out: str, limit: int | None, workers: int) -> dict:
    """The project's Beam ingest job, one split, into `out`."""
    from components.example_gen import IngestConfig, run_ingest

    t0 = time.perf_counter()
    config = IngestConfig(
        sources=(("synthetic", data),),
        output_dir=out,
        limits=((("*", limit),) if limit else ()),
        stored_size=STORED_SIZE,
        splits=SPLITS,
    )
    stats = run_ingest(
        config,
        ["--runner=DirectRunner", f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"],
        overwrite=True,
    )
    files = stats["files"]
    return {"found": files["found"], "written": files["written"], "rejected": files["rejected"],
            "duplicates": files["duplicates"], "seconds": time.perf_counter() - t0}


def child_loader(examples: str, image_size: int, batch_size: int, batches: int) -> dict:
    """The training input pipeline alone: warm-up batches, then `batches` timed, no model."""
    from components import loader

    ds = loader.make_dataset(examples, "train", image_size=image_size, batch_size=batch_size, training=True,
                             repeat=True, seed=SEED)
    it = iter(ds)
    for _ in range(LOADER_WARMUP_BATCHES):
        next(it)
    n = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        l, _ab = next(it)
        n += int(l.shape[0])
    seconds = time.perf_counter() - t0
    return {"examples": n, "seconds": seconds, "examples_per_s": n / seconds}


def _load_arrays(examples: str, image_size: int):
    """The report's way: every record into float32 numpy L [N,S,S,1] and ab/128 [N,S,S,2] arrays (centre crop)."""
    import numpy as np

    from components import loader

    count = _records(examples)
    x = np.empty((count, image_size, image_size, 1), np.float32)
    y = np.empty((count, image_size, image_size, 2), np.float32)
    ds = loader.make_dataset(examples, "train", image_size=image_size, batch_size=256, training=False)
    i = 0
    for l, ab in ds.as_numpy_iterator():
        k = len(l)
        x[i : i + k], y[i : i + k] = l, ab
        i += k
    if i != count:
        raise RuntimeError(f"read {i} records from {examples}, its statistics say {count}")
    return x, y


def _batch_clock(keras, total_batches: int):
    """A callback noting the time at each batch end; stops training after `total_batches`."""

    class BatchClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())
            if len(self.times) >= total_batches:
                self.model.stop_training = True

    return BatchClock()


def child_fit(way: str, examples: str, image_size: int, batch_size: int, warmup: int, steps: int) -> dict:
    """Model 1 `fit` through the loader or on in-memory numpy arrays; examples/s over the batches after warm-up."""
    import keras

    from components import loader, models

    keras.utils.set_random_seed(SEED)
    result: dict = {"way": way, "records": _records(examples)}
    total = warmup + steps
    if way == "numpy":
        t0 = time.perf_counter()
        x, y = _load_arrays(examples, image_size)
        result.update(load_s=time.perf_counter() - t0, array_bytes=int(x.nbytes + y.nbytes))
        if len(x) // batch_size < total:
            raise SystemExit(f"{len(x)} records make {len(x) // batch_size} full batches of {batch_size}, fewer "
                             f"than --warmup + --steps = {total}; use more --images")
    model = models.compile_model(models.build_model("model1", image_size))
    clock = _batch_clock(keras, total)
    if way == "loader":
        ds = loader.make_dataset(examples, "train", image_size=image_size, batch_size=batch_size, training=True,
                                 repeat=True, seed=SEED)
        model.fit(ds, epochs=1, steps_per_epoch=total, callbacks=[clock], verbose=0)
    else:
        model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=True, callbacks=[clock], verbose=0)
    times = clock.times
    if len(times) < total:
        raise RuntimeError(f"fit ran {len(times)} batches, expected {total}")
    seconds = times[total - 1] - times[warmup - 1]
    result.update(batches=len(times), timed_batches=steps, seconds=seconds,
                  examples_per_s=steps * batch_size / seconds,
                  batch_s=[round(b - a, 3) for a, b in zip(times, times[1:])])
    return result


def child_step(model_kind: str, policy: str, backbone: str, image_size: int, batch_size: int, warmup: int,
               steps: int) -> dict:
    """`train_on_batch` on one in-memory synthetic batch: --warmup untimed, then `steps` timed."""
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    keras.mixed_precision.set_global_policy(policy)  # before building, so the layers take it
    from components import models

    if model_kind == "model1":
        model = models.build_model("model1", image_size)
    else:
        parts = models.build_model2_parts(image_size, backbone=backbone, weights=None)
        model = parts.head if model_kind == "model2_head" else parts.end_to_end
    models.compile_model(model)
    rng = np.random.default_rng(SEED)
    l = tf.constant(rng.uniform(0.0, 100.0, (batch_size, image_size, image_size, 1)).astype(np.float32))
    ab = tf.constant(rng.uniform(-0.5, 0.5, (batch_size, image_size, image_size, 2)).astype(np.float32))
    inputs = l
    if model_kind == "model2_head":
        logits = rng.normal(size=(batch_size, 1000))
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # like the classifier's softmax
        inputs = {"l": l, "embedding": tf.constant(probabilities.astype(np.float32))}
    step_s = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        model.train_on_batch(inputs, ab)  # returns the loss as a Python number: the step has finished
        step_s.append(time.perf_counter() - t0)
    seconds = sum(step_s[warmup:])
    return {"model": model_kind, "policy": policy, "backbone": backbone if model_kind == "model2_e2e" else None,
            "trainable_parameters": models.trainable_parameters(model), "seconds": seconds,
            "examples_per_s": steps * batch_size / seconds, "step_s": [round(s, 3) for s in step_s]}


def _child_main(args: argparse.Namespace) -> int:
    try:
        if args.child == "ingest":
            result = child_ingest(args.data, args.examples, args.limit, args.workers)
        elif args.child == "loader":
            result = child_loader(args.examples, args.image_size, args.batch_size, args.loader_batches)
        elif args.child in ("fit_loader", "fit_numpy"):
            result = child_fit(args.child[4:], args.examples, args.image_size, args.batch_size, args.warmup,
                               args.steps)
        else:
            result = child_step(args.model, args.policy, args.backbone, args.image_size, args.batch_size,
                                args.warmup, args.loop_steps)
    except MemoryError:
        emit_result({"error": "MemoryError"})
        return 3
    emit_result(result)
    return 0


# ---------------------------------------------------------------- the driver


@dataclass
class Method:
    key: str  # unique; the JSON's and the summary's name for it
    label: str  # what the tables call it
    child: list[str]  # the child's arguments after --child
    records: int | None = None


@dataclass
class Group:
    """Methods that alternate with each other."""

    name: str
    methods: list[Method] = field(default_factory=list)


def _run_child(child_args: list[str], timeout: float) -> tuple[dict | None, str | None, dict]:
    """Run this module's --child mode measured; (result, failure, measurement facts)."""
    cmd = [sys.executable, "-m", "benchmarks.training_benchmark", "--child", *child_args]
    m = run_measured(cmd, cwd=str(REPO_ROOT), env=child_env(REPO_ROOT), timeout=timeout)
    result = parse_result(m)
    failure = failure_reason(m, result)
    if failure is None and (result is None or "error" in result):
        failure = "no result"
    facts = {"wall_s": round(m.wall_s, 2), "peak_rss_bytes": m.peak_rss_bytes,
             "ru_maxrss_bytes": m.ru_maxrss_bytes, "cpu_s": round(m.cpu_s, 1) if m.cpu_s is not None else None,
             "command": cmd}
    if failure is not None:
        lines = [ln for ln in m.stdout_tail.splitlines() if ln.strip()]
        facts["stdout_tail"] = "\n".join(lines[-15:])
    return result, failure, facts


def ensure_examples(workdir: Path, data_dir: str, source_images: int, limit: int | None, workers: int,
                    timeout: float) -> tuple[str, int]:
    """example_gen's output for `data_dir` (a `limit` sample of it, or all), made once and reused; (dir, records)."""
    out = workdir / f"examples_{limit or source_images}_of_{source_images}"
    from schemas import SCHEMA_VERSION

    wanted = {"source": data_dir, "source_images": source_images, "limit": limit, "stored_size": STORED_SIZE,
              "splits": "train=100", "seed": SEED, "schema_version": SCHEMA_VERSION}
    marker = out / EXAMPLES_MARKER
    try:
        if json.loads(marker.read_text()) == wanted:
            records = _records(str(out))
            print(f"data: reusing {records} records in {out}", flush=True)
            return str(out), records
    except (OSError, ValueError, KeyError):
        pass
    if out.exists():
        shutil.rmtree(out)
    print(f"data: ingesting {limit or source_images} of {source_images} images into {out} ...", flush=True)
    child = ["ingest", "--data", data_dir, "--examples", str(out), "--workers", str(workers)]
    result, failure, facts = _run_child(child + (["--limit", str(limit)] if limit else []), timeout)
    if failure is not None:
        raise RuntimeError(f"ingest failed ({failure}):\n{facts.get('stdout_tail', '')}")
    marker.write_text(json.dumps(wanted))
    print(f"data: {result['written']} records written ({result['rejected']} rejected, {result['duplicates']} "
          f"duplicates) in {facts['wall_s']:.0f} s", flush=True)
    return str(out), _records(str(out))


def _warm_page_cache(examples: str) -> None:
    for root, _dirs, files in os.walk(examples):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def build_groups(args, sections: list[int], small: tuple[str, int], large: tuple[str, int] | None) -> list[Group]:
    s, b = str(args.image_size), str(args.batch_size)
    common = ["--image_size", s, "--batch_size", b, "--warmup", str(args.warmup)]

    def step(model: str, policy: str = "float32", backbone: str = "mobilenet_v2") -> list[str]:
        return ["step", "--model", model, "--policy", policy, "--backbone", backbone, *common,
                "--loop_steps", str(args.loop_steps)]

    groups = []
    g = Group("model1 input and precision")
    if 1 in sections:
        g.methods.append(Method("loader_alone", "loader alone (make_dataset training=True, repeat; no model)",
                                ["loader", "--examples", small[0], "--image_size", s, "--batch_size", b,
                                 "--loader_batches", str(args.loader_batches)], small[1]))
    if 1 in sections or 4 in sections:
        g.methods.append(Method("step_float32", "Model 1 train step, float32", step("model1")))
    if 4 in sections:
        g.methods.append(Method("step_mixed_bfloat16", "Model 1 train step, mixed_bfloat16",
                                step("model1", "mixed_bfloat16")))
    if g.methods:
        groups.append(g)
    if 2 in sections:
        fit = ["--examples", small[0], *common, "--steps", str(args.steps)]
        groups.append(Group("fit", [
            Method("fit_loader", "loader: model.fit(make_dataset(...))", ["fit_loader", *fit], small[1]),
            Method("fit_numpy", "report's way: all records -> numpy, model.fit(x, y)", ["fit_numpy", *fit], small[1]),
        ]))
    if 3 in sections and large is not None:
        ms = str(args.mem_image_size)
        g = Group("memory")
        for (examples, records), size in ((small, "small"), (large, "large")):
            mem = ["--examples", examples, "--image_size", ms, "--batch_size", b, "--warmup", "1",
                   "--steps", str(args.mem_steps)]
            g.methods.append(Method(f"mem_loader_{size}", "loader", ["fit_loader", *mem], records))
            g.methods.append(Method(f"mem_numpy_{size}", "report's way (numpy)", ["fit_numpy", *mem], records))
        groups.append(g)
    if 5 in sections:
        g = Group("model2", [Method("m2_head", "head on precomputed embeddings", step("model2_head"))])
        for bb in args.backbones:
            g.methods.append(Method(f"m2_e2e_{bb}", f"end to end, {bb} backbone every step",
                                    step("model2_e2e", backbone=bb)))
        groups.append(g)
    return groups


def summarize(runs: list[dict], methods: list[Method]) -> dict:
    out = {}
    for m in methods:
        rs = [r for r in runs if r["key"] == m.key]
        good = [r for r in rs if r["ok"]]
        res = [r["result"] for r in good]
        out[m.key] = {
            "label": m.label,
            "records": m.records,
            "runs": len(rs),
            "ok_runs": len(good),
            "failures": sorted({r["failure"] for r in rs if not r["ok"]}),
            "examples_per_s": median(x.get("examples_per_s") for x in res),
            "load_s": median(x.get("load_s") for x in res),
            "array_bytes": median(x.get("array_bytes") for x in res),
            "peak_rss_bytes": median(r["peak_rss_bytes"] for r in good),
            "wall_s": median(r["wall_s"] for r in good),
        }
    return out


def _ratio(a, b):
    return a / b if a and b else None


def _f(x, spec: str, empty: str = "-") -> str:
    return empty if x is None else format(x, spec)


def _mib(x) -> str:
    return _f(x / MIB if x else None, ".0f")


def _ok(s: dict) -> str:
    if s["ok_runs"] == s["runs"]:
        return f"{s['ok_runs']}/{s['runs']}"
    return f"{s['ok_runs']}/{s['runs']} ({'; '.join(s['failures'])})"


def ratios(summary: dict, backbones: list[str]) -> dict:
    g = lambda key, what="examples_per_s": (summary.get(key) or {}).get(what)  # noqa: E731
    return {
        "loader_vs_training": _ratio(g("loader_alone"), g("step_float32")),
        "fit_loader_vs_numpy": _ratio(g("fit_loader"), g("fit_numpy")),
        "loader_memory_growth": _ratio(g("mem_loader_large", "peak_rss_bytes"), g("mem_loader_small", "peak_rss_bytes")),
        "numpy_memory_growth": _ratio(g("mem_numpy_large", "peak_rss_bytes"), g("mem_numpy_small", "peak_rss_bytes")),
        "bf16_vs_float32": _ratio(g("step_mixed_bfloat16"), g("step_float32")),
        "model2_head_vs_e2e": {bb: _ratio(g("m2_head"), g(f"m2_e2e_{bb}")) for bb in backbones},
    }


def print_sections(summary: dict, r: dict, args, sections: list[int], cores: int, bf16_native: list[str]) -> None:
    setting = f"Model 1, {args.image_size}x{args.image_size}, batch {args.batch_size}, {cores} cores"

    def row(key: str, *cells) -> list:
        s = summary[key]
        return [s["label"], *cells, _ok(s)]

    if 1 in sections:
        print(f"\n1. Input pipeline alone vs what training consumes ({setting})")
        print_table(["measurement", "examples/s", "peak RSS MiB", "runs ok"], [
            row("loader_alone", _f(summary["loader_alone"]["examples_per_s"], ".1f"),
                _mib(summary["loader_alone"]["peak_rss_bytes"])),
            row("step_float32", _f(summary["step_float32"]["examples_per_s"], ".2f"),
                _mib(summary["step_float32"]["peak_rss_bytes"])),
        ])
        print(f"loader / training need: {_f(r['loader_vs_training'], '.1f')}x "
              f"(target >= {TARGETS['loader_vs_training']:g}x)")
    if 2 in sections:
        print(f"\n2. Training throughput, model.fit ({setting}; {summary['fit_loader']['records']} records; "
              f"{args.steps} timed steps after {args.warmup} warm-up)")
        print_table(["way", "examples/s", "load s", "in-memory MiB", "peak RSS MiB", "runs ok"], [
            row(k, _f(summary[k]["examples_per_s"], ".2f"), _f(summary[k]["load_s"], ".1f"),
                _mib(summary[k]["array_bytes"]), _mib(summary[k]["peak_rss_bytes"]))
            for k in ("fit_loader", "fit_numpy")
        ])
        print(f"loader / report's way: {_f(r['fit_loader_vs_numpy'], '.3f')} "
              f"(target >= {TARGETS['fit_loader_vs_numpy']:g})")
    if 3 in sections and "mem_loader_small" in summary:
        n, big = summary["mem_loader_small"]["records"], summary["mem_loader_large"]["records"]
        print(f"\n3. Peak resident memory of training (Model 1, {args.mem_image_size}x{args.mem_image_size}, batch "
              f"{args.batch_size}, 1 + {args.mem_steps} steps) on {n} and {big} records")
        rows = []
        for way, target in (("loader", f"< {TARGETS['loader_memory_growth']:g}"), ("numpy", "grows")):
            a, b = summary[f"mem_{way}_small"], summary[f"mem_{way}_large"]
            rows.append([a["label"], _mib(a["peak_rss_bytes"]), _mib(b["peak_rss_bytes"]),
                         "x" + _f(r[f"{way}_memory_growth"], ".2f") if r[f"{way}_memory_growth"] else "-",
                         target, _mib(b["array_bytes"]) if way == "numpy" else "-",
                         f"{_ok(a)}, {_ok(b)}"])
        print_table(["way", f"{n} records MiB", f"{big} records MiB", "growth", "target",
                     f"arrays at {big} MiB", "runs ok"], rows)
    if 4 in sections:
        print(f"\n4. Mixed precision, Model 1 train step on in-memory batches ({setting})")
        print_table(["policy", "examples/s", "s/step", "runs ok"], [
            row(k, _f(summary[k]["examples_per_s"], ".2f"),
                _f(args.batch_size / summary[k]["examples_per_s"] if summary[k]["examples_per_s"] else None, ".2f"))
            for k in ("step_float32", "step_mixed_bfloat16")
        ])
        native = ("this CPU has " + " and ".join(bf16_native) + " (native bfloat16)") if bf16_native else \
            "this CPU lacks avx512_bf16/amx_bf16: oneDNN emulates bfloat16"
        print(f"mixed_bfloat16 / float32: {_f(r['bf16_vs_float32'], '.2f')}x ({native})")
    if 5 in sections:
        print(f"\n5. Model 2 train step, head on precomputed embeddings vs end to end ({args.image_size}x"
              f"{args.image_size}, batch {args.batch_size}, random weights, {cores} cores)")
        keys = ["m2_head"] + [f"m2_e2e_{bb}" for bb in args.backbones]
        print_table(["model 2", "examples/s", "s/step", "head speedup", "runs ok"], [
            row(k, _f(summary[k]["examples_per_s"], ".2f"),
                _f(args.batch_size / summary[k]["examples_per_s"] if summary[k]["examples_per_s"] else None, ".2f"),
                "" if k == "m2_head" else _f(r["model2_head_vs_e2e"][k[len("m2_e2e_"):]], ".2f"))
            for k in keys
        ])


def headline(r: dict, args, sections: list[int], cores: int, small_n: int | None, large_n: int | None) -> str:
    parts = []
    if 1 in sections:
        parts.append(f"loader {_f(r['loader_vs_training'], '.1f')}x training's need (target >= 3)")
    if 2 in sections:
        parts.append(f"fit via loader {_f(r['fit_loader_vs_numpy'], '.2f')} of numpy fit (target >= 0.95)")
    if 3 in sections:
        at = f" at {args.mem_image_size}x{args.mem_image_size}" if args.mem_image_size != args.image_size else ""
        parts.append(f"peak RSS {small_n}->{large_n} records{at}: loader x{_f(r['loader_memory_growth'], '.2f')} "
                     f"(target < 1.2), numpy x{_f(r['numpy_memory_growth'], '.2f')}")
    if 4 in sections:
        parts.append(f"mixed_bfloat16 {_f(r['bf16_vs_float32'], '.2f')}x float32")
    if 5 in sections:
        parts.append("Model 2 head on embeddings " + ", ".join(
            f"{_f(v, '.2f')}x end to end ({bb})" for bb, v in r["model2_head_vs_e2e"].items()))
    return (f"headline ({cores} cores, Model 1 {args.image_size}x{args.image_size} batch {args.batch_size}, "
            f"median of {args.repeats}): " + "; ".join(parts))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.training_benchmark",
        description="Training benchmark: loader vs training need, fit through the loader vs the report's numpy "
        "way (throughput and peak memory at two data sizes), float32 vs mixed_bfloat16, Model 2 head on "
        "embeddings vs end to end.",
    )
    d = DEFAULTS
    p.add_argument("--images", type=int, help=f"records for sections 1, 2 and 3's small size (default {d['images']})")
    p.add_argument("--scale", type=int, help=f"section 3's large size is --images times this (default {d['scale']})")
    p.add_argument("--image_size", type=int, help=f"training crop side, a multiple of 8, <= {STORED_SIZE} "
                   f"(default {d['image_size']})")
    p.add_argument("--batch_size", type=int, help=f"default {d['batch_size']}")
    p.add_argument("--steps", type=int, help=f"timed fit steps in section 2 (default {d['steps']})")
    p.add_argument("--loop_steps", type=int, help=f"timed train steps in sections 1, 4, 5 (default {d['loop_steps']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps first, everywhere (default {d['warmup']})")
    p.add_argument("--loader_batches", type=int, help=f"timed batches of the loader alone (default {d['loader_batches']})")
    p.add_argument("--mem_image_size", type=int, help="crop side in section 3 (default --image_size)")
    p.add_argument("--mem_steps", type=int, help=f"train steps after the first in section 3 (default {d['mem_steps']})")
    p.add_argument("--repeats", type=int, help=f"repetitions; median quoted (default {d['repeats']})")
    p.add_argument("--backbones", nargs="+", choices=BACKBONES, help="Model 2 backbones in section 5 (default both)")
    p.add_argument("--sections", type=int, nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="which sections to run (default all)")
    p.add_argument("--workdir", default="/tmp/train_bench", help="data, ingested records and the JSON "
                   "(default /tmp/train_bench)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds before one run is killed (default 3600)")
    p.add_argument("--quick", action="store_true", help="small settings for an end-to-end check in a few minutes "
                   "(flags given explicitly still win)")
    for hidden in ("--child", "--data", "--examples", "--model", "--policy", "--backbone"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.child:
        return _child_main(args)

    preset = QUICK if args.quick else DEFAULTS
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.mem_image_size is None:
        args.mem_image_size = args.image_size
    for name in ("images", "batch_size", "steps", "loop_steps", "warmup", "loader_batches", "mem_steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.scale < 2:
        parser.error("--scale must be at least 2 (BENCHMARKS.md asks for sizes at least 5x apart)")
    for name in ("image_size", "mem_image_size"):
        v = getattr(args, name)
        if v % 8 or not 8 <= v <= STORED_SIZE:
            parser.error(f"--{name} must be a multiple of 8 between 8 and {STORED_SIZE}, got {v}")
    sections = sorted(set(args.sections))
    cores = usable_cores()
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    workers = min(2, cores)
    t_start = time.perf_counter()

    small_n, large_n = args.images, args.images * args.scale
    large = None
    if 3 in sections:
        data_dir = ensure_data(workdir, large_n)
        small = ensure_examples(workdir, data_dir, large_n, small_n, workers, args.timeout)
        large = ensure_examples(workdir, data_dir, large_n, None, workers, args.timeout)
    else:
        data_dir = ensure_data(workdir, small_n)
        small = ensure_examples(workdir, data_dir, small_n, None, workers, args.timeout)
    if 2 in sections and small[1] // args.batch_size < args.warmup + args.steps:
        parser.error(f"{small[1]} records make fewer than --warmup + --steps = {args.warmup + args.steps} batches "
                     f"of {args.batch_size}; raise --images")
    for examples in (small, large):
        if examples:
            _warm_page_cache(examples[0])
    t_data = time.perf_counter() - t_start

    groups = build_groups(args, sections, small, large)
    methods = [m for g in groups for m in g.methods]
    runs: list[dict] = []
    for rep in range(args.repeats):
        for g in groups:
            k = rep % len(g.methods)
            for m in g.methods[k:] + g.methods[:k]:
                result, failure, facts = _run_child(m.child, args.timeout)
                runs.append({"key": m.key, "repeat": rep, "ok": failure is None, "failure": failure,
                             "result": result, **facts})
                what = (f"{result['examples_per_s']:.2f} ex/s" if failure is None else f"FAILED: {failure}")
                print(f"rep {rep + 1}/{args.repeats} {m.key:22s} {what}, peak RSS {facts['peak_rss_bytes'] / MIB:.0f}"
                      f" MiB, wall {facts['wall_s']:.1f} s", flush=True)
                if failure is not None and facts.get("stdout_tail"):
                    print("    " + facts["stdout_tail"].splitlines()[-1][:300], flush=True)

    summary = summarize(runs, methods)
    r = ratios(summary, args.backbones if 5 in sections else [])
    from components.trainer import native_bf16_flags  # the rule --precision auto applies

    native = native_bf16_flags()
    line = headline(r, args, sections, cores, small[1], large[1] if large else None)
    total_s = time.perf_counter() - t_start

    print(f"\nTraining benchmark; median of {args.repeats} run(s), each measurement its own process; machine: "
          f"{cores} usable cores ({os.cpu_count()} total), {platform.machine()}, Python {platform.python_version()}; "
          f"total {total_s / 60:.1f} min (data {t_data:.0f} s).")
    print_sections(summary, r, args, sections, cores, native)

    config = {k: getattr(args, k) for k in (*DEFAULTS, "quick")}
    command = ["python", "-m", "benchmarks.training_benchmark"]
    for k in DEFAULTS:
        v = getattr(args, k)
        command += [f"--{k}", *map(str, v)] if isinstance(v, list) else [f"--{k}", str(v)]
    command += ["--sections", *map(str, sections), "--workdir", str(workdir)]
    out = {
        "benchmark": "training",
        "command": " ".join(command),
        "machine": machine_info(native_bf16_flags=native),
        "config": {**config, "sections": sections, "seed": SEED, "stored_size": STORED_SIZE,
                   "small_records": small[1], "large_records": large[1] if large else None,
                   "throughput": "examples/s after warm-up, in the child process; 2 cores unless stated",
                   "memory": "peak of VmRSS over the child process tree, sampled every 50 ms"},
        "summary": summary,
        "ratios": r,
        "targets": TARGETS,
        "total_s": round(total_s, 1),
        "runs": runs,
        "headline": line,
    }
    write_results(workdir / "training_benchmark.json", out, lead="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
