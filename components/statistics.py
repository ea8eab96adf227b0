"""statistics: the training split's ab colour prior, an artifact of its own (Zhang et al. 2016's class rebalancing).

example_gen counts every split's pixels per quantised (a, b) code
(statistics/ab_counts.npz). This stage turns one split's counts (the training
split's) into the prior that the classification head trains with and the
evaluator's rebalanced AuC weights pixels by: the in-gamut ab bins, their
smoothed empirical distribution and the rebalancing weights, as prior.json,
with prior.png to look at. New data means new counts, so a new prior.

    python -m components.statistics --examples out/ingest --output_dir out/statistics
"""

from __future__ import annotations

import dataclasses
import io
import sys
from typing import Optional, Sequence

import numpy as np

from components import settings
from components.settings import INPUT, OUTPUT, artifact, setting
from schemas.artifacts import AB_COUNTS_FILE, PRIOR_FILE, PRIOR_PICTURE_FILE


class StatisticsError(Exception):
    """A prior that cannot be made from these records; one sentence naming the thing and the fix."""


@dataclasses.dataclass
class StatisticsConfig:
    """The prior's settings (the CLI and the pipeline's `statistics` section)."""

    examples: str = artifact(INPUT, "example_gen's output dir (it holds statistics/ab_counts.npz)")
    output_dir: str = artifact(OUTPUT, "where prior.json and prior.png go")
    split: str = setting("train", "the split whose pixels make the prior")
    rebalance_lambda: float = setting(
        0.5, "mix of the prior with the uniform distribution in the weights ((1-lambda) p + lambda/Q)^-1: "
        "0 weights rare colours by their full rarity, 1 not at all")
    smoothing_sigma: float = setting(5.0, "Gaussian smoothing of the prior over the bins, in ab units")

    def validate(self, prefix: str = "--") -> "StatisticsConfig":
        if not 0.0 <= self.rebalance_lambda <= 1.0:
            raise StatisticsError(f"{prefix}rebalance_lambda must be in [0, 1], got {self.rebalance_lambda}.")
        if not self.smoothing_sigma > 0:
            raise StatisticsError(f"{prefix}smoothing_sigma must be positive, got {self.smoothing_sigma}.")
        if not self.split:
            raise StatisticsError(f"{prefix}split is empty; name a split such as train.")
        return self


def split_counts(examples: str, split: str) -> np.ndarray:
    """The 256x256 ab code histogram example_gen counted for `split`; StatisticsError if it is not there."""
    import tensorflow as tf

    path = f"{examples.rstrip('/')}/{AB_COUNTS_FILE}"
    if not tf.io.gfile.exists(path):
        raise StatisticsError(
            f"{path} does not exist: these records were written by an older example_gen or are not example_gen's "
            "output; run example_gen on the images again."
        )
    with tf.io.gfile.GFile(path, "rb") as f:
        with np.load(io.BytesIO(f.read())) as counts:
            if split not in counts.files:
                raise StatisticsError(
                    f"{path} holds no split {split!r} (it has {', '.join(counts.files) or 'none'}); "
                    "pick one of those."
                )
            histogram = counts[split]
    if histogram.shape != (256, 256) or histogram.sum() <= 0:
        raise StatisticsError(f"split {split!r} in {path} counts no pixels; ingest some images into it first.")
    return histogram


def write_prior(config: StatisticsConfig) -> dict:
    """Write OUT/prior.json and OUT/prior.png; returns a summary (bins, pixels, weight range, paths)."""
    import tensorflow as tf

    from components import colorbins

    config.validate()
    counts = split_counts(config.examples, config.split)
    prior = colorbins.ColorPrior.from_counts(counts, lam=config.rebalance_lambda, sigma=config.smoothing_sigma)
    out = config.output_dir.rstrip("/")
    tf.io.gfile.makedirs(out)
    prior_path, picture_path = f"{out}/{PRIOR_FILE}", f"{out}/{PRIOR_PICTURE_FILE}"
    prior.save(prior_path)
    with tf.io.gfile.GFile(picture_path, "wb") as f:
        f.write(colorbins.render_prior_png(prior))
    top = np.argsort(prior.prior)[::-1][:3]
    return {
        "prior": prior_path, "picture": picture_path, "bins": int(len(prior.centres)), "pixels": int(prior.pixels),
        "split": config.split, "fingerprint": prior.fingerprint,
        "weight_min": float(prior.weights.min()), "weight_max": float(prior.weights.max()),
        "commonest_ab": [[float(v) for v in prior.centres[i]] for i in top],
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = settings.parser(StatisticsConfig, prog="python -m components.statistics",
                             description="Write the ab colour prior of one split of example_gen's records.")
    config = settings.from_args(StatisticsConfig, parser.parse_args(argv))
    try:
        summary = write_prior(config)
    except StatisticsError as e:
        print(f"statistics: {e}", file=sys.stderr)
        return 2
    print(f"statistics: the {summary['split']} split's prior over {summary['bins']} ab bins from "
          f"{summary['pixels']:,} pixels (weights {summary['weight_min']:.2f}..{summary['weight_max']:.2f}): "
          f"{summary['prior']}, {summary['picture']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
