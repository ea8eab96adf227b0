"""ingest: image folders (or the synthetic stage's images) -> LAB TFRecords, statistics, schema (components.example_gen)."""

from __future__ import annotations

from typing import Any

from pipeline import executor
from pipeline import manifest as mf
from schemas.artifacts import EXAMPLES_DIR, SCHEMA_FILE, STATISTICS_FILE

NAME = "ingest"
CONFIG_KEYS = ("data.sources", "data.stored_size", "data.min_side", "data.limit", "data.min_colorfulness",
               "ingest.splits")


def run(ctx: executor.StageContext) -> dict:
    from components import example_gen as eg

    d = ctx.config.data
    sources = list(d.sources.items()) or [("synthetic", ctx.input("images"))]
    with executor.user_errors(eg.IngestError):
        ingest_config = eg.IngestConfig(
            sources=tuple(sources), output_dir=ctx.output_dir,
            limits=(("*", d.limit),) if d.limit else (), stored_size=d.stored_size, min_side=d.min_side,
            min_colorfulness=d.min_colorfulness, splits=eg.parse_splits(ctx.config.ingest.splits),
        )
        stats = eg.run_ingest(ingest_config, ctx.beam_args, overwrite=True)
    print(eg.format_summary(stats, ctx.output_dir), flush=True)
    files = stats["files"]
    return {
        **{k: files[k] for k in ("found", "written", "rejected", "duplicates")},
        "rejected_by_reason": files["rejected_by_reason"],
        "splits": {name: entry["count"] for name, entry in stats["splits"].items()},
        "mean_colorfulness": stats["mean_colorfulness"],
    }


def _external(config: Any) -> dict[str, str]:
    return {f"data_dir:{name}": mf.fingerprint_tree(path) for name, path in sorted(config.data.sources.items())}


def stage(config: Any) -> executor.Stage:
    return executor.Stage(
        NAME, run, inputs={} if config.data.sources else {"images": "synthetic"}, config=CONFIG_KEYS,
        code=(__name__,), external_inputs=_external, beam=True,
        outputs={"examples": EXAMPLES_DIR, "statistics": STATISTICS_FILE, "schema": SCHEMA_FILE},
    )
