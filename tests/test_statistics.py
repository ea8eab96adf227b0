"""The statistics stage: the training split's ab prior, from the counts the real ingest job wrote."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import tensorflow as tf

from tests.conftest import SIZE, read_records


def test_ingest_counts_every_splits_pixels_by_ab_code(ingested, ingest_config):
    with np.load(os.path.join(ingest_config.output_dir, "statistics", "ab_counts.npz")) as counts:
        per_split = {split: counts[split] for split in counts.files}
    for split, entry in ingested["splits"].items():
        if entry["count"]:
            assert per_split[split].shape == (256, 256)
            assert per_split[split].sum() == entry["count"] * SIZE * SIZE, split
    total = sum(per_split.values())
    binned = np.asarray(ingested["ab_histogram"]["counts"])
    assert (total.reshape(64, 4, 64, 4).sum(axis=(1, 3)) == binned).all()  # the same pixels as statistics.json
    # exactly the codes the records hold
    from schemas import decode_codes, parse_examples

    all_codes = []
    for split, entry in ingested["splits"].items():
        if entry["count"]:
            parsed = parse_examples(tf.constant(read_records(ingest_config.output_dir, split)))
            codes = np.stack([decode_codes(c, SIZE, SIZE).numpy() for c in parsed["image/lab_codes"]]).reshape(-1, 3)
            expected = np.zeros((256, 256), np.int64)
            np.add.at(expected, (codes[:, 1], codes[:, 2]), 1)
            assert np.array_equal(per_split[split], expected), split
            all_codes.append(codes[:, 0])
    l_counts = np.bincount(np.concatenate(all_codes), minlength=256)
    assert np.array_equal(l_counts, ingested["l_histogram"]["counts"])


def test_the_prior_comes_from_the_training_split_and_weights_rare_colours_up(ingested, ingest_config, tmp_path):
    from components import colorbins, statistics

    out = tmp_path / "statistics"
    summary = statistics.write_prior(statistics.StatisticsConfig(examples=ingest_config.output_dir,
                                                                 output_dir=str(out)))
    prior = colorbins.ColorPrior.load(str(out / "prior.json"))
    assert summary["pixels"] == prior.pixels == ingested["splits"]["train"]["count"] * SIZE * SIZE
    assert summary["bins"] == len(prior.centres) == len(colorbins.in_gamut_centres())
    assert np.isclose(prior.prior.sum(), 1.0) and np.isclose((prior.prior * prior.weights).sum(), 1.0)
    assert np.all(np.isfinite(prior.weights)) and np.all(prior.weights > 0)
    common, rare = np.argmax(prior.prior), np.argmin(prior.prior)
    assert prior.weights[rare] > prior.weights[common]
    with Image.open(io.BytesIO((out / "prior.png").read_bytes())) as picture:
        assert picture.format == "PNG" and np.asarray(picture).std() > 5


def test_a_missing_count_file_or_split_is_one_sentence_and_exit_2(ingest_config, tmp_path, capsys):
    from components import statistics

    assert statistics.main(["--examples", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "ab_counts.npz does not exist" in err and "run example_gen" in err and err.count("\n") == 1
    assert statistics.main(["--examples", ingest_config.output_dir, "--output_dir", str(tmp_path / "o"),
                            "--split", "holdout"]) == 2
    err = capsys.readouterr().err
    assert "no split 'holdout'" in err and "train" in err
    with pytest.raises(statistics.StatisticsError, match="rebalance_lambda must be in"):
        statistics.StatisticsConfig(examples="e", output_dir="o", rebalance_lambda=2.0).validate()


def test_the_cli_writes_the_prior(ingest_config, tmp_path, capsys):
    from components import statistics

    assert statistics.main(["--examples", ingest_config.output_dir, "--output_dir", str(tmp_path),
                            "--rebalance_lambda", "0.25"]) == 0
    assert "the train split's prior over" in capsys.readouterr().out
    assert json.loads((tmp_path / "prior.json").read_text())["lam"] == 0.25
