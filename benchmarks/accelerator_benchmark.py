"""Accelerator benchmark: train step rates, whether the loader keeps up, and serving latency, on this machine's device.

One command, within --budget_s (default 450 s, under 8 minutes), on whatever
device TensorFlow sees (the first GPU, else the CPU). Each measurement runs in
its own subprocess (this module re-run with a hidden --child mode), so a
precision policy or an XLA setting never leaks into the next one. It measures,
in this order:

1. Loader alone on all the host's cores at --image_size, batch 48
   (benchmarks.loader_benchmark.loader_rate: the training loader iterated
   with no model, records from the project's ingest job on LFW-like
   synthetic JPEGs): examples/s and seconds per batch.
2. Serving: Model 1 with random weights exported as the serving SavedModel
   (components.export, as benchmarks/serving_benchmark.py does), its
   `serving_default` signature called in process with JPEGs of 250x250 and
   1024x768, batch 1 and 8: median latency over --serving_calls calls after
   two warm-up calls.
3. Train step rate (`train_on_batch` on one in-memory batch, Adam and MSE as
   components.models.compile_model, random weights) of Model 1 and Model 2
   end to end (MobileNetV2 and InceptionResNetV2 backbones) at --image_size,
   batch 48, float32 and the mixed policy of the device (mixed_float16 on a
   GPU, mixed_bfloat16 on a CPU with native bf16), each without and with XLA
   (`jit_compile`). The first step (tracing, XLA compiling) is timed apart;
   the rate is from the next --steps steps.
4. The largest batch that fits, for each model at its best batch-48 setting.
   On a GPU: batch 48 doubled until a step runs out of device memory (or
   1,536); the last that ran. On a CPU nothing runs out before time does:
   the batch is the largest multiple of 48 whose activations (the process's
   peak resident memory growth per example at batch 48, times the batch)
   fit in half the available memory, capped at 1,536, and it is timed only
   when its estimated step fits the remaining budget.

Measurements are taken in priority order; what does not fit the budget is
listed as skipped with its reason. The loader keeps the device busy when its
seconds per batch are below the step's seconds per batch (the ratio is
printed). The table and a JSON (<workdir>/accelerator_benchmark.json) say
which device, precision and XLA setting was fastest; the trainer's defaults
for this kind of device are printed beside it.

    python -m benchmarks.accelerator_benchmark --workdir /tmp/accel_bench
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from benchmarks.measure import (
    RESULT_PREFIX,
    child_env,
    emit_result,
    failure_reason,
    machine_info,
    print_table,
    run_measured,
    usable_cores,
    write_results,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH = 48
MAX_BATCH = 1536
MODELS = (("model1", None), ("model2", "mobilenet_v2"), ("model2", "inception_resnet_v2"))
SERVING_SIZES = ((250, 250), (768, 1024))  # height, width
SERVING_BATCHES = (1, 8)
LOADER_IMAGES = 500
SEED = 0


# ---------------------------------------------------------------- child processes (the measured work)


def device_kind() -> str:
    import tensorflow as tf

    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def mixed_policy(kind: str) -> tuple[str | None, str]:
    """The device's mixed precision policy, or None with the reason when it would be emulated."""
    if kind == "gpu":
        return "mixed_float16", "GPU"
    from components.trainer.precision import native_bf16_flags

    flags = native_bf16_flags()
    if flags:
        return "mixed_bfloat16", f"CPU with {' and '.join(flags)}"
    return None, "the CPU lacks avx512_bf16/amx_bf16: bfloat16 would be emulated"


def _proc_bytes(path: str, field: str) -> int:
    """A "<field>: N kB" line of a /proc file, in bytes; 0 when it is missing."""
    with open(path) as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_rss_bytes() -> int:
    return _proc_bytes("/proc/self/status", "VmHWM")


def _available_bytes() -> int:
    return _proc_bytes("/proc/meminfo", "MemAvailable")


def _build(model: str, backbone: str | None, image_size: int):
    from components import models

    if model == "model1":
        return models.build_model("model1", image_size)
    return models.build_model2_parts(image_size, backbone=backbone, weights=None).end_to_end


def _batch(image_size: int, batch: int):
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(SEED)
    l = tf.constant(rng.uniform(0.0, 100.0, (batch, image_size, image_size, 1)).astype(np.float32))
    ab = tf.constant(rng.uniform(-0.5, 0.5, (batch, image_size, image_size, 2)).astype(np.float32))
    return l, ab


def _steps(model, l, ab, steps: int) -> tuple[float, list[float]]:
    """First step's seconds (tracing, compiling) and the next `steps` steps' seconds."""
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        model.train_on_batch(l, ab)  # returns the loss as a number: the step has finished
        times.append(time.perf_counter() - t0)
    return times[0], times[1:]


def child_train(model: str, backbone: str | None, policy: str, image_size: int, steps: int, deadline: float,
                largest: bool, xla_modes: list[bool]) -> None:
    """Emits one result line per (XLA setting) at batch 48, then one for the largest batch when asked."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    keras.mixed_precision.set_global_policy(policy)  # before building, so the layers take it
    kind = device_kind()
    net = _build(model, backbone, image_size)
    base = {"model": model, "backbone": backbone, "policy": policy, "device": kind}
    l, ab = _batch(image_size, BATCH)
    best = None
    rss_before = _peak_rss_bytes()
    for xla in xla_modes:
        row = {**base, "xla": xla, "batch": BATCH}
        net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=xla)
        first, timed = _steps(net, l, ab, 1)
        row["first_step_s"] = first
        if time.time() + timed[0] * (steps - 1) > deadline:
            rest = []
        else:
            _, rest = _steps(net, l, ab, steps - 1) if steps > 1 else (None, [])
        step_s = statistics.median(timed + rest)
        row.update(step_s=step_s, steps=len(timed + rest), examples_per_s=BATCH / step_s)
        emit_result(row)  # with --largest the driver has this row already, from its own run
        if best is None or step_s < best["step_s"]:
            best = row
    if not largest or best is None:
        return
    per_example = max(_peak_rss_bytes() - rss_before, 1) / BATCH
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=best["xla"])
    row = {**base, "xla": best["xla"], "largest": True}
    if kind == "gpu":
        batch, fitted = BATCH * 2, None
        while batch <= MAX_BATCH and time.time() < deadline:
            try:
                big_l, big_ab = _batch(image_size, batch)
                _steps(net, big_l, big_ab, 0)
                fitted = batch
            except (tf.errors.ResourceExhaustedError, tf.errors.InternalError):
                break
            batch *= 2
        row["chosen_by"] = "doubling from 48 until a step runs out of device memory (cap 1536)"
    else:
        fitted = min(MAX_BATCH, int(_available_bytes() * 0.5 / per_example) // BATCH * BATCH)
        row["chosen_by"] = (f"half the available memory / {per_example / 2**20:.0f} MiB peak growth per example "
                            f"at batch 48, a multiple of 48, cap {MAX_BATCH}")
    row["batch"] = fitted
    estimate = (best["first_step_s"] + best["step_s"] * 2) * (fitted or BATCH) / BATCH
    if not fitted or fitted == BATCH:
        row["skipped"] = "no batch larger than 48 fits"
    elif time.time() + estimate > deadline:
        row["skipped"] = f"budget: a step would take about {best['step_s'] * fitted / BATCH:.0f} s"
    else:
        big_l, big_ab = _batch(image_size, fitted)
        first, timed = _steps(net, big_l, big_ab, 1)
        row.update(first_step_s=first, step_s=timed[0], steps=1, examples_per_s=fitted / timed[0])
    emit_result(row)


def child_serving(workdir: str, image_size: int, calls: int) -> None:
    import tensorflow as tf

    from benchmarks.serving_benchmark import _export, _jpeg
    from schemas.serving import SERVING_SIGNATURE

    t0 = time.perf_counter()
    base = _export(workdir, image_size)
    export_s = time.perf_counter() - t0
    fn = tf.saved_model.load(os.path.join(base, "1")).signatures[SERVING_SIGNATURE]
    for height, width in SERVING_SIZES:
        for batch in SERVING_BATCHES:
            request = tf.constant([_jpeg(height, width, seed) for seed in range(batch)])
            for _ in range(2):
                fn(image_bytes=request)
            latencies = []
            for _ in range(calls):
                t = time.perf_counter()
                fn(image_bytes=request)["colorized_bytes"].numpy()
                latencies.append(time.perf_counter() - t)
            emit_result({"serving": True, "height": height, "width": width, "batch": batch,
                         "p50_ms": statistics.median(latencies) * 1e3, "calls": calls, "export_s": export_s})


def child_loader(examples: str, image_size: int, batches: int) -> None:
    from benchmarks.loader_benchmark import loader_rate

    emit_result({"loader": True, **loader_rate(examples, image_size, BATCH, batches, usable_cores())})


def _child_main(args: argparse.Namespace) -> int:
    if args.child == "train":
        child_train(args.model, args.backbone or None, args.policy, args.image_size, args.steps, args.deadline,
                    args.largest, [x == "on" for x in args.xla])
    elif args.child == "serving":
        child_serving(args.workdir, args.image_size, args.serving_calls)
    else:
        child_loader(args.examples, args.image_size, args.loader_batches)
    return 0


# ---------------------------------------------------------------- the driver


def _results(stdout: str) -> list[dict]:
    out = []
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            try:
                out.append(json.loads(line[len(RESULT_PREFIX):]))
            except ValueError:
                pass
    return out


def _run(child: list[str], timeout: float) -> tuple[list[dict], str | None]:
    cmd = [sys.executable, "-m", "benchmarks.accelerator_benchmark", "--child", *child]
    m = run_measured(cmd, cwd=str(REPO_ROOT), env=child_env(REPO_ROOT), timeout=max(timeout, 1.0))
    failure = failure_reason(m)
    if failure and failure != "timed out":
        failure += ": " + " | ".join([ln for ln in m.stdout_tail.splitlines() if ln.strip()][-2:])[:300]
    return _results(m.stdout_tail), failure


def _device_and_defaults() -> dict:
    """The device this machine's TensorFlow sees and what the trainer picks on it (a child: TF stays out of here)."""
    m = run_measured([sys.executable, "-c", (
        "import json, tensorflow as tf; from components.trainer.precision import choose_precision;"
        "from benchmarks.accelerator_benchmark import device_kind, mixed_policy;"
        "k = device_kind(); p, why = choose_precision('auto');"
        "print('" + RESULT_PREFIX + "' + json.dumps({'kind': k, 'mixed': mixed_policy(k), "
        "'trainer_precision': p, 'trainer_reason': why, 'trainer_xla': k == 'gpu',"
        "'gpus': [d.name for d in tf.config.list_physical_devices('GPU')]}))")],
        cwd=str(REPO_ROOT), env=child_env(REPO_ROOT), timeout=300)
    found = _results(m.stdout_tail)
    if not found:
        raise RuntimeError("could not start TensorFlow: " + m.stdout_tail[-500:])
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.accelerator_benchmark",
        description="Train step rates (Model 1, Model 2 x2 backbones; float32 / mixed; XLA off / on; batch 48 and "
        "the largest), the loader against the step, and serving latency, on this machine's device, within a budget.",
    )
    parser.add_argument("--budget_s", type=float, default=450.0, help="total seconds (default 450)")
    parser.add_argument("--image_size", type=int, default=224, help="training side (default 224)")
    parser.add_argument("--steps", type=int, default=2, help="timed train steps per setting (default 2)")
    parser.add_argument("--serving_calls", type=int, default=5, help="timed serving calls per case (default 5)")
    parser.add_argument("--loader_batches", type=int, default=30, help="timed loader batches (default 30)")
    parser.add_argument("--workdir", default="/tmp/accel_bench", help="data, export and the JSON")
    parser.add_argument("--child", choices=("train", "serving", "loader"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", default="", help=argparse.SUPPRESS)
    parser.add_argument("--policy", help=argparse.SUPPRESS)
    parser.add_argument("--xla", nargs="+", default=["off", "on"], help=argparse.SUPPRESS)
    parser.add_argument("--largest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--examples", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child_main(args)

    start = time.time()
    deadline = start + args.budget_s
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = _device_and_defaults()
    kind = env["kind"]
    mixed, mixed_why = env["mixed"]
    print(f"device: {kind}{' ' + ', '.join(env['gpus']) if env['gpus'] else ''}; {usable_cores()} host cores; "
          f"mixed policy: {mixed or 'none'} ({mixed_why}); the trainer picks {env['trainer_precision']}, XLA "
          f"{'on' if env['trainer_xla'] else 'off'} (Keras's jit_compile='auto')", flush=True)
    skipped: list[str] = []

    from benchmarks.ingest_benchmark import ensure_data
    from benchmarks.training_benchmark import ensure_examples

    examples, _ = ensure_examples(workdir, ensure_data(workdir, LOADER_IMAGES), LOADER_IMAGES, None,
                                  min(2, usable_cores()), max(deadline - time.time(), 60))
    loader, failure = _run(["loader", "--examples", examples, "--image_size", str(args.image_size),
                            "--loader_batches", str(args.loader_batches)], deadline - time.time())
    if failure:
        skipped.append(f"loader: {failure}")
    serving, failure = _run(["serving", "--workdir", str(workdir), "--image_size", str(args.image_size),
                             "--serving_calls", str(args.serving_calls)], deadline - time.time())
    if failure:
        skipped.append(f"serving: {failure}")

    policies = ["float32"] + ([mixed] if mixed else [])
    train: list[dict] = []

    def measure(model: str, backbone: str | None, policy: str, xla: str, largest: bool) -> None:
        name = f"{model}{'/' + backbone if backbone else ''} {policy} XLA {xla}" + (" largest batch" if largest else "")
        left = deadline - time.time()
        if left < 30:
            skipped.append(f"{name}: budget")
            return
        rows, failure = _run(["train", "--model", model, "--backbone", backbone or "", "--policy", policy,
                              "--image_size", str(args.image_size), "--steps", str(args.steps),
                              "--deadline", str(deadline - 5), "--xla", xla] + (["--largest"] if largest else []),
                             left - 2)
        rows = [r for r in rows if bool(r.get("largest")) == largest]
        train.extend(rows)
        if not rows:
            skipped.append(f"{name}: {failure or 'no result'}")
        for r in rows:
            print(f"{name}: batch {r['batch']}: " + (f"{r['examples_per_s']:.1f} examples/s"
                  if "examples_per_s" in r else r.get("skipped", "")), flush=True)

    # breadth first: every model at batch 48 without XLA, then with XLA, then the largest batches
    for xla in ("off", "on"):
        for model, backbone in MODELS:
            for policy in policies:
                measure(model, backbone, policy, xla, False)
    for model, backbone in MODELS:
        rows = [r for r in train if r["model"] == model and r["backbone"] == backbone and "examples_per_s" in r]
        if rows:
            top = max(rows, key=lambda r: r["examples_per_s"])
            measure(model, backbone, top["policy"], "on" if top["xla"] else "off", True)

    print()
    print(f"Device: {kind}; {usable_cores()} host cores; image {args.image_size}x{args.image_size}; "
          f"{time.time() - start:.0f} s of a {args.budget_s:.0f} s budget.")
    rows = []
    for r in train:
        name = r["model"] + (f"/{r['backbone']}" if r["backbone"] else "")
        rows.append([name, r["policy"], "on" if r["xla"] else "off", r["batch"],
                     f"{r['first_step_s']:.1f}" if "first_step_s" in r else "-",
                     f"{r['step_s']:.2f}" if "step_s" in r else "-",
                     f"{r['examples_per_s']:.1f}" if "examples_per_s" in r else r.get("skipped", "-")])
    print_table(["model", "precision", "XLA", "batch", "first step s", "step s", "examples/s"], rows)
    for r in train:
        if r.get("largest"):
            print(f"  largest batch for {r['model']}{'/' + r['backbone'] if r['backbone'] else ''}: {r['batch']}, "
                  f"chosen by {r['chosen_by']}")
    best: dict = {}
    for r in train:
        if "examples_per_s" in r and not r.get("largest"):
            key = r["model"] + (f"/{r['backbone']}" if r["backbone"] else "")
            if key not in best or r["examples_per_s"] > best[key]["examples_per_s"]:
                best[key] = r
    if loader:
        lo = loader[0]
        print()
        print_table(["loader on all host cores", "examples/s", "s per batch of 48", "model (its best setting)",
                     "step s", "loader / step", "keeps the device busy"],
                    [[lo["cores"], f"{lo['examples_per_s']:.0f}", f"{lo['seconds_per_batch']:.3f}",
                      f"{k} ({b['policy']}, XLA {'on' if b['xla'] else 'off'})", f"{b['step_s']:.2f}",
                      f"{lo['seconds_per_batch'] / b['step_s']:.2f}",
                      "yes" if lo["seconds_per_batch"] < b["step_s"] else "NO"] for k, b in best.items()])
    if serving:
        print()
        print_table(["serving_default", "batch", "p50 ms", "ms per image"],
                    [[f"{s['width']}x{s['height']}", s["batch"], f"{s['p50_ms']:.0f}",
                      f"{s['p50_ms'] / s['batch']:.0f}"] for s in serving])
    if skipped:
        print()
        print("not measured: " + "; ".join(skipped))
    line = "headline: " + "; ".join(
        f"{k} best {b['examples_per_s']:.1f} ex/s ({b['policy']}, XLA {'on' if b['xla'] else 'off'})"
        for k, b in best.items()) + f" on {kind}; trainer default {env['trainer_precision']}, XLA " + \
        ("on" if env["trainer_xla"] else "off")
    out = {"benchmark": "accelerator", "command": "python -m benchmarks.accelerator_benchmark "
           + " ".join(argv if argv is not None else sys.argv[1:]), "machine": machine_info(device=kind, gpus=env["gpus"]),
           "defaults": env, "train": train, "best": best, "loader": loader, "serving": serving, "skipped": skipped,
           "seconds": time.time() - start, "headline": line}
    write_results(workdir / "accelerator_benchmark.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
