"""synthetic: the built-in scenes, generated when no --data_dir is given (components.synthetic)."""

from __future__ import annotations

from typing import Any

from pipeline import executor

NAME = "synthetic"


def run(ctx: executor.StageContext) -> dict:
    from components import synthetic

    s = ctx.config.data.synthetic
    paths = synthetic.generate(ctx.output_dir, s.num_images, seed=s.seed, size=s.size,
                               workers=1 if s.num_images < 2000 else 2)
    print(f"synthetic: wrote {len(paths)} images to {ctx.output_dir}", flush=True)
    return {"images": len(paths)}


def stage(config: Any) -> executor.Stage:
    return executor.Stage(NAME, run, config="data.synthetic", code=(__name__,))
