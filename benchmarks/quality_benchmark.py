"""Colour quality on real photos: Model 1 vs Model 2, regression vs classification head, same data, same budget.

The report's comparison, measured: ingest the folders once (example_gen, the
training split's ab prior from the statistics stage), train every
configuration for the same number of minutes on this machine, evaluate each
on the test split against gray, and print one table with gray as a row. Also
writes one picture: gray | each model | truth for 8 test images, then 4
historical photos colorized at their own resolution (no truth).

    python -m benchmarks.quality_benchmark --data_dir flickr8k=../real/flickr8k \\
        --historical_dir ../real/historical --backbone_weights ../real/mobilenet_v2_1.0_224_imagenet.h5
    python -m benchmarks.quality_benchmark --data_dir lfw=../real/lfw --minutes 10 \\
        --configs model1:regression model1:classification --output_dir bench_out/quality_lfw

A configuration is FAMILY:HEAD[:FUSION] (model1 or model2; regression or
classification; for model2 global, the report's, spatial or unet); Model 2 uses
the MobileNetV2 backbone with the weights given. Every configuration trains
with the same seed, crop size, batch size and learning rate; EarlyStopping
is off (the budget decides), the learning rate decays linearly to zero over
the budget and each keeps its last epoch (--lr_decay none, --keep best: a
constant rate, the lowest validation loss). The last line is the headline:
the best configuration's colourfulness against the truth's and its PSNR
against gray's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.measure import machine_info, print_table  # noqa: E402

DEFAULT_CONFIGS = ("model1:regression", "model1:classification", "model2:regression", "model2:classification",
                   "model2:classification:spatial", "model2:classification:unet")
TILE = 160  # side of one picture cell
TEST_IMAGES, HISTORICAL_IMAGES = 8, 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality_benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", action="append", required=True, metavar="NAME=PATH",
                   help="an image folder as a named source; repeatable (both: the report's combined set)")
    p.add_argument("--historical_dir", help="black-and-white photos for the picture's last rows")
    p.add_argument("--backbone_weights", default="imagenet",
                   help="Model 2's MobileNetV2 weights: a .h5 path, imagenet (the Keras cache) or none")
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), metavar="FAMILY:HEAD[:FUSION]")
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per configuration (default 10)")
    p.add_argument("--image_size", type=int, default=64, help="training crop side (default 64)")
    p.add_argument("--stored_size", type=int, default=80, help="stored side of the records (default 80)")
    p.add_argument("--limit", type=int, help="at most this many images per source")
    p.add_argument("--width", type=float, default=1.0, help="channel-width multiplier (default 1.0)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--steps_per_epoch", type=int, default=50)
    p.add_argument("--validation_steps", type=int, default=16, help="eval batches per epoch (default 16)")
    p.add_argument("--temperature", type=float, default=0.38, help="annealed-mean temperature (default 0.38)")
    p.add_argument("--rebalance_lambda", type=float, default=0.5,
                   help="the prior's lambda: 1 is no rebalancing, lower pushes rarer colours (default 0.5)")
    p.add_argument("--lr_decay", choices=("none", "budget"), default="budget",
                   help="learning-rate schedule: budget (default: linear decay to zero over --minutes) or none")
    p.add_argument("--keep", choices=("best", "last"), default="last",
                   help="the epoch each configuration keeps: last (default: the budget decides) or best val_loss")
    p.add_argument("--output_dir", default="bench_out/quality")
    p.add_argument("--reuse", action="store_true",
                   help="reuse an ingest and trained models already in --output_dir (re-evaluate, redraw)")
    return p


def _ingest(args, out: str) -> tuple[str, str]:
    """(examples dir, prior path): example_gen once, then the statistics stage's prior."""
    from components import example_gen as eg
    from components import statistics
    from schemas.artifacts import PRIOR_FILE, STATISTICS_FILE

    examples, stats_dir = os.path.join(out, "ingest"), os.path.join(out, "statistics")
    if not (args.reuse and os.path.exists(os.path.join(examples, STATISTICS_FILE))):
        config = eg.IngestConfig(
            sources=eg.parse_data_dirs(args.data_dir), output_dir=examples, stored_size=args.stored_size,
            min_side=args.image_size, limits=(("*", args.limit),) if args.limit else ())
        stats = eg.run_ingest(config, ["--runner=DirectRunner", "--direct_num_workers=2",
                                       "--direct_running_mode=multi_processing"], overwrite=True)
        print(eg.format_summary(stats, examples), flush=True)
    prior = os.path.join(stats_dir, PRIOR_FILE)
    if not (args.reuse and os.path.exists(prior)):
        statistics.write_prior(statistics.StatisticsConfig(examples=examples, output_dir=stats_dir,
                                                           rebalance_lambda=args.rebalance_lambda))
    return examples, prior


def _parse_config(name: str) -> tuple[str, str, str] | None:
    """FAMILY:HEAD[:FUSION] -> (family, head, fusion), None when it is not one."""
    from components.hparams import FAMILIES, FUSIONS, HEADS

    parts = name.split(":")
    if len(parts) not in (2, 3):
        return None
    family, head, fusion = (parts + ["global"])[:3]
    valid = family in FAMILIES and head in HEADS and fusion in FUSIONS and (family == "model2" or fusion == "global")
    return (family, head, fusion) if valid else None


def _train(args, name: str, examples: str, prior: str, out: str) -> dict:
    from components import hparams, trainer

    train_dir = os.path.join(out, "train", name.replace(":", "_"))
    model_path = os.path.join(train_dir, "model.keras")
    summary_path = os.path.join(train_dir, "train_summary.json")
    if not (args.reuse and os.path.exists(summary_path)):
        hp_path = os.path.join(out, "hparams", name.replace(":", "_") + ".json")
        os.makedirs(os.path.dirname(hp_path), exist_ok=True)
        family, head, fusion = _parse_config(name)
        hparams.save({"family": family, "width": args.width, "backbone": "mobilenet_v2", "loss": "mse",
                      "learning_rate": args.learning_rate, "batch_size": args.batch_size, "head": head,
                      "fusion": fusion}, hp_path)
        config = trainer.TrainConfig(
            examples=examples, output_dir=train_dir, hparams=hp_path, prior=prior, image_size=args.image_size,
            epochs=100_000, steps_per_epoch=args.steps_per_epoch, validation_steps=args.validation_steps,
            patience=100_000, max_minutes=args.minutes, lr_decay=args.lr_decay, keep=args.keep,
            temperature=args.temperature, backbone_weights=args.backbone_weights, seed=0, verbose=0)
        started = time.monotonic()
        trainer.train(config)
        print(f"{name}: trained for {(time.monotonic() - started) / 60:.1f} min", flush=True)
    with open(summary_path) as f:
        return {"model": model_path, "summary": json.load(f)}


def _evaluate(name: str, model: str, examples: str, prior: str, out: str) -> dict:
    from components import evaluator

    result = evaluator.evaluate(evaluator.EvalConfig(
        model=model, examples=examples, output_dir=os.path.join(out, "eval", name.replace(":", "_")),
        prior=prior, grid_images=TEST_IMAGES))
    return {"metrics": result.metrics, "blessed": result.blessed, "reason": getattr(result, "reason", "")}


def _label(image, text: str):
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, image.width, 14], fill=(255, 255, 255))
    draw.text((3, 1), text, fill=(0, 0, 0))
    return image


def _tile(rgb):
    """A TILE x TILE cell: the centre square of an image, resized."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(rgb)
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return Image.fromarray(rgb[top:top + side, left:left + side]).resize((TILE, TILE), Image.BICUBIC)


def _picture(args, names: list[str], models: dict[str, str], examples: str, path: str) -> str:
    """gray | each model | truth rows for TEST_IMAGES test images, then HISTORICAL_IMAGES historical photos."""
    import numpy as np
    from PIL import Image

    from components import evaluator, loader
    from components.decode import load_rgb
    from components.evaluator.pictures import colorize_photo, historical_files
    from schemas import AB_SCALE

    predictors = {name: evaluator.load_predictor(models[name]) for name in names}
    l, ab = next(iter(loader.make_dataset(examples, "test", image_size=args.image_size, batch_size=TEST_IMAGES,
                                          training=False)))
    columns = ["gray", *names, "truth"]
    rows = []
    gray = evaluator.render(l, np.zeros_like(ab), neutral=True).numpy()
    truth = evaluator.render(l, ab * AB_SCALE).numpy()
    predicted = {name: evaluator.render(l, p(l)).numpy() for name, p in predictors.items()}
    for i in range(int(l.shape[0])):
        rows.append([gray[i], *[predicted[name][i] for name in names], truth[i]])
    if args.historical_dir:
        files = historical_files(args.historical_dir)
        step = max(1, len(files) // HISTORICAL_IMAGES)
        for file in files[::step][:HISTORICAL_IMAGES]:
            with open(file, "rb") as f:
                rgb = np.asarray(load_rgb(f.read(), min_side=1, max_pixels=50_000_000))
            gray_photo = np.repeat(rgb.mean(axis=-1, keepdims=True).round().astype(np.uint8), 3, axis=-1)
            colorized = [colorize_photo(predictors[name], rgb, args.image_size) for name in names]
            rows.append([gray_photo, *colorized, None])
    sheet = Image.new("RGB", (TILE * len(columns), TILE * len(rows) + 16), (255, 255, 255))
    for j, name in enumerate(columns):
        sheet.paste(_label(Image.new("RGB", (TILE, 16), (255, 255, 255)), name), (j * TILE, 0))
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            if cell is not None:
                sheet.paste(_tile(cell), (j * TILE, 16 + i * TILE))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sheet.save(path)
    return path


def _fmt(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def run(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    for name in args.configs:
        if _parse_config(name) is None:
            print(f"quality_benchmark: configuration {name!r} is not FAMILY:HEAD[:FUSION], e.g. model1:classification "
                  "or model2:classification:spatial.", file=sys.stderr)
            return 2
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    examples, prior = _ingest(args, out)
    results = {}
    for name in args.configs:
        trained = _train(args, name, examples, prior, out)
        results[name] = {**trained, **_evaluate(name, trained["model"], examples, prior, out)}
    picture = _picture(args, list(args.configs), {n: r["model"] for n, r in results.items()}, examples,
                       os.path.join(out, "quality.png"))

    first = next(iter(results.values()))["metrics"]
    gray = first["gray"]
    headers = ["colorizer", "PSNR dB", "SSIM", "CF", "CF/truth", "AuC", "AuC rebal.", "train ex/s", "steps",
               "blessed"]
    rows = [["gray", _fmt(gray["psnr"]), _fmt(gray["ssim"], 3), _fmt(gray["colorfulness"], 1),
             _fmt(gray.get("colorfulness_ratio"), 2), _fmt(gray["auc"], 3), _fmt(gray.get("auc_rebalanced"), 3),
             "", "", ""]]
    for name, r in results.items():
        m, s = r["metrics"]["model"], r["summary"]
        steps = s.get("epochs_run", 0) * args.steps_per_epoch
        rows.append([name, _fmt(m["psnr"]), _fmt(m["ssim"], 3), _fmt(m["colorfulness"], 1),
                     _fmt(m.get("colorfulness_ratio"), 2), _fmt(m["auc"], 3), _fmt(m.get("auc_rebalanced"), 3),
                     _fmt(s.get("examples_per_second"), 1), steps, "yes" if r["blessed"] else "no"])
    truth_cf = first["model"]["colorfulness_truth"]
    sources = ", ".join(d.partition("=")[0] or d for d in args.data_dir)
    print(f"\n{sources}: {first['images']} test images at {args.image_size}x{args.image_size}, "
          f"{args.minutes:g} min of training per configuration, truth colourfulness {truth_cf:.1f}; "
          f"{machine_info()['usable_cores']} cores")
    print_table(headers, rows)
    print(f"picture: {picture}")
    record = {"args": vars(args), "machine": machine_info(), "picture": picture,
              "results": {n: {k: r[k] for k in ("metrics", "blessed", "reason")} | {"summary": r["summary"]}
                          for n, r in results.items()}}
    with open(os.path.join(out, "quality.json"), "w") as f:
        json.dump(record, f, indent=1, default=str)
    best_name = max(results, key=lambda n: (results[n]["metrics"]["model"]["psnr"] >= gray["psnr"] - 1.0,
                                             results[n]["metrics"]["model"]["colorfulness"]))
    best = results[best_name]["metrics"]["model"]
    print(f"headline: {best_name} colourfulness {best['colorfulness']:.1f} = "
          f"{100 * best['colorfulness'] / truth_cf:.0f}% of the truth's {truth_cf:.1f}, "
          f"PSNR {best['psnr']:.2f} dB vs gray {gray['psnr']:.2f} dB ({best['psnr'] - gray['psnr']:+.2f})")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    sys.exit(run())
