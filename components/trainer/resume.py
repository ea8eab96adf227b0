"""Resume state: BackupAndRestore's epoch, and the CSV training log trimmed to the epochs that will not rerun."""

from __future__ import annotations

import csv
import io
import json
import math
import posixpath

import tensorflow as tf



def _resume_epoch(backup_dir: str) -> int:
    """The epoch BackupAndRestore will resume at: 0 for a fresh run."""
    path = posixpath.join(backup_dir, "training_metadata.json")
    if not tf.io.gfile.exists(path):
        return 0
    try:
        with tf.io.gfile.GFile(path) as f:
            return int(json.load(f)["epoch"])
    except (ValueError, KeyError, TypeError):
        return 0


def _read_log(path: str) -> list[dict[str, str]]:
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path) as f:
        return list(csv.DictReader(io.StringIO(f.read())))


def _trim_log(path: str, keep_before: int) -> None:
    """Drop logged epochs >= keep_before: those the resumed (or fresh) run will train again."""
    rows = _read_log(path)
    kept = [row for row in rows if int(row["epoch"]) < keep_before]
    if len(kept) == len(rows):
        return
    if not kept:
        tf.io.gfile.remove(path)
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(out.getvalue())


def _best(rows: list[dict[str, str]]) -> tuple[float | None, int | None]:
    """(lowest finite val_loss, its epoch) among logged epochs."""
    best, best_epoch = None, None
    for row in rows:
        try:
            value = float(row.get("val_loss", "nan"))
        except ValueError:
            continue
        if math.isfinite(value) and (best is None or value < best):
            best, best_epoch = value, int(row["epoch"])
    return best, best_epoch

