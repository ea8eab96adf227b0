"""example_gen: a Beam job that turns image folders into LAB TFRecords.

It finds images recursively under each data dir, drops exact duplicates,
decodes robustly (rejecting bad files with a reason into a dead-letter
file), centre-crops to the stored size, converts sRGB to quantised LAB,
writes tf.train.Examples split train/eval/test by a stable hash of each
file's path, and computes statistics in the same pass. Then the validator
reads the records back and checks them against the schema.

Local, on the built-in synthetic set:

    python -m components.synthetic --output_dir /tmp/synthetic --num_images 2000
    python -m components.example_gen --data_dir synthetic=/tmp/synthetic \\
        --output_dir /tmp/ingest --runner=DirectRunner \\
        --direct_num_workers=2 --direct_running_mode=multi_processing

LFW and flickr8k, the report's 1,920-image subset of each:

    python -m components.example_gen --data_dir lfw=/data/lfw \\
        --data_dir flickr8k=/data/Flicker8k_Dataset --limit 1920 --output_dir /tmp/ingest

Dataflow (the same code; setup.py ships it to the workers):

    python -m components.example_gen --data_dir lfw=gs://BUCKET/lfw \\
        --output_dir gs://BUCKET/ingest --runner=DataflowRunner \\
        --project PROJECT --region REGION --temp_location gs://BUCKET/tmp \\
        --setup_file ./setup.py
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import posixpath
import sys
import time
from typing import Iterable, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from schemas.artifacts import (
    AB_COUNTS_FILE,
    AB_HISTOGRAM_FILE,
    DUPLICATES_FILE,
    EXAMPLES_DIR,
    IMAGE_EXTENSIONS,
    REJECTED_FILE,
    SCHEMA_FILE,
    STATISTICS_FILE,
)

SPLITS_DEFAULT = "train=80,eval=10,test=10"
MEMORY_RETRY_WAITS_S = (1.0, 5.0)
"""Waits before decoding a file again after a MemoryError; when the last try fails too, it is rejected as
out_of_memory (not corrupt: the file may be fine on a worker with more memory)."""
BATCH_SIZES = (8, 64)
"""Smallest and largest number of images per ToExamples call; beam.BatchElements picks within it by timing."""
AB_BIN = 4  # width, in quantised a/b units, of the 2-D ab histogram's bins
_NAMESPACE = "example_gen"



class IngestError(Exception):
    """A mistake the user can fix; the message is one sentence saying how."""


class FileRef(NamedTuple):
    source: str
    relpath: str
    path: str


class IngestConfig(NamedTuple):
    """Everything the workers need; plain values so it pickles to any runner."""

    sources: tuple  # ((name, root), ...)
    output_dir: str
    limits: tuple = ()  # ((name or "*", n), ...)
    stored_size: int = 250
    min_side: int = 250
    max_pixels: int = 64_000_000
    min_colorfulness: float = 3.0
    splits: tuple = (("train", 80), ("eval", 10), ("test", 10))
    gzip: bool = False  # raw codes deflate to half the disk but read 3x slower (README, "Loader on many cores")

    def limit_for(self, source: str) -> int | None:
        named = dict(self.limits)
        return named.get(source, named.get("*"))


# ---------------------------------------------------------------- pure functions


def parse_data_dirs(values: Iterable[str]) -> tuple:
    """['lfw=/data/lfw', '/data/flickr8k'] -> (('lfw', '/data/lfw'), ('flickr8k', '/data/flickr8k'))."""
    sources = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or "/" in name or ":" in name:
            path = value
            name = posixpath.basename(value.rstrip("/")) or "images"
        path = path.rstrip("/") or "/"
        if not name:
            raise IngestError(f"--data_dir {value!r} has an empty name; write it as NAME=PATH.")
        sources.append((name, path))
    names = [n for n, _ in sources]
    if len(set(names)) != len(names):
        raise IngestError(f"--data_dir names must be unique, got {names}; give each one as NAME=PATH.")
    return tuple(sources)


def parse_limits(values: Iterable[str]) -> tuple:
    """['1920'] or ['lfw=1920'] -> (('*', 1920),) / (('lfw', 1920),)."""
    limits = []
    for value in values:
        name, sep, number = value.rpartition("=")
        name = name if sep else "*"
        try:
            n = int(number)
        except ValueError:
            n = -1
        if n < 1:
            raise IngestError(f"--limit {value!r} is not a positive number of images; write N or NAME=N.")
        limits.append((name, n))
    return tuple(limits)


def parse_splits(value: str) -> tuple:
    """'train=80,eval=10,test=10' -> (('train', 80), ('eval', 10), ('test', 10))."""
    splits = []
    for part in value.split(","):
        name, _, weight = part.partition("=")
        try:
            w = int(weight)
        except ValueError:
            w = -1
        if not name or w < 0:
            raise IngestError(f"--splits {value!r} is not like 'train=80,eval=10,test=10'.")
        splits.append((name.strip(), w))
    if sum(w for _, w in splits) <= 0:
        raise IngestError(f"--splits {value!r} gives every split weight 0.")
    return tuple(splits)


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` alone (SHA-256), the same on every machine."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def split_for(source: str, relpath: str, splits: tuple) -> str:
    """The split of a file: a stable hash of its source and relative path."""
    position = stable_fraction(f"{source}/{relpath}") * sum(w for _, w in splits)
    for name, weight in splits:
        if position < weight:
            return name
        position -= weight
    return splits[-1][0]


def histograms(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L histogram (256 codes) and full-resolution ab histogram [a code, b code] of LabTable.packed codes:
    what ingest counts per image (through LabTable.encode) and sums into the statistics."""
    flat = np.asarray(packed, np.uint32).reshape(-1)
    l_hist = np.bincount(flat & 0xFF, minlength=256)
    ab_hist = np.bincount((flat >> 8) & 0xFFFF, minlength=1 << 16)  # index a + 256 b
    return l_hist, ab_hist.reshape(256, 256).T


def bin_ab(ab_hist: np.ndarray) -> np.ndarray:
    """256x256 ab code histogram -> AB_BIN-wide bins."""
    bins = 256 // AB_BIN
    return ab_hist.reshape(bins, AB_BIN, bins, AB_BIN).sum(axis=(1, 3))


def reject(ref: FileRef, reason: str, detail: str) -> beam.pvalue.TaggedOutput:
    """A dead-letter record on the 'rejected' output, counted per reason."""
    Metrics.counter(_NAMESPACE, f"rejected_{reason}").inc()
    return beam.pvalue.TaggedOutput("rejected", {"path": ref.path, "source": ref.source, "reason": reason, "detail": detail})


# ---------------------------------------------------------------- DoFns


class ListImageFiles(beam.DoFn):
    """(name, root) -> lists of up to BATCH_SIZES[1] FileRefs: every image file below root, honouring the
    per-source limit. Lists, so that distributing and hashing cost Beam one element per list, not per file."""

    def __init__(self, config: IngestConfig):
        self._config = config

    def process(self, source):
        name, root = source
        matches = FileSystems.match([FileSystems.join(root, "**")])[0].metadata_list
        prefix = root.rstrip("/") + "/"
        refs = sorted(
            FileRef(name, m.path[len(prefix):] if m.path.startswith(prefix) else m.path, m.path)
            for m in matches
            if m.path.lower().endswith(IMAGE_EXTENSIONS)
        )
        limit = self._config.limit_for(name)
        over_limit = 0
        if limit is not None and len(refs) > limit:
            refs.sort(key=lambda r: stable_fraction(f"sample/{r.source}/{r.relpath}"))
            over_limit = len(refs) - limit
            refs = sorted(refs[:limit])
        Metrics.counter(_NAMESPACE, "files_found").inc(len(refs))
        yield beam.pvalue.TaggedOutput("found", ("found", name, len(refs), over_limit))
        for start in range(0, len(refs), BATCH_SIZES[1]):
            yield refs[start : start + BATCH_SIZES[1]]


class ReadAndHash(beam.DoFn):
    """[FileRef, ...] -> (sha256, FileRef) per file; empty or unreadable files are rejected here."""

    def process(self, refs: list):
        for ref in refs:
            try:
                with FileSystems.open(ref.path) as f:
                    data = f.read()
            except Exception as e:  # the filesystem's own error names the problem
                yield reject(ref, "unreadable", f"The file cannot be read ({e}).")
                continue
            if not data:
                yield reject(ref, "empty", "The file is empty (0 bytes).")
                continue
            yield hashlib.sha256(data).hexdigest(), ref


def keep_first(item):
    """(sha256, [FileRef, ...]) -> the first path kept, the others tagged as duplicates."""
    sha256, refs = item
    refs = sorted(refs)
    kept = refs[0]
    for dup in refs[1:]:
        Metrics.counter(_NAMESPACE, "duplicates").inc()
        yield beam.pvalue.TaggedOutput(
            "duplicates", {"path": dup.path, "source": dup.source, "duplicate_of": kept.path, "sha256": sha256}
        )
    yield sha256, kept


class ToExamples(beam.DoFn):
    """A batch of (sha256, FileRef) -> (split, [serialized tf.train.Example, ...]) per split, or rejections.

    One call per batch of tens of images (beam.BatchElements in front): the
    batch's images are decoded, then for each one compiled pass
    (LabTable.encode) looks its LAB codes up in the table, writes them for
    the record and counts them into the bundle's L and ab histograms (two
    phases, so each keeps its own code and data in the core's caches: 9%
    less CPU than image by image); each split's records leave as one
    element, so Beam's per-element cost is paid per batch. A file that
    fails is rejected alone; the rest of its batch is written. Statistics
    of the written images are pre-aggregated per bundle and emitted once
    per bundle on the 'stats' output: per-image histograms would move
    0.5 MiB per image through the runner.
    """

    def __init__(self, config: IngestConfig):
        self._config = config

    def setup(self):
        from components.color import LabTable

        self._lab = LabTable()
        self._statistics = IngestStatistics()
        self._split_names = [name for name, _ in self._config.splits]
        self._split_index = {name: index for index, name in enumerate(self._split_names)}
        self._codes = np.empty(self._config.stored_size**2 * 3, np.uint8)  # each image's record bytes, reused
        self._bundle_l = np.zeros(256, np.int64)
        self._bundle_ab = np.zeros((len(self._split_names), 1 << 16), np.int64)  # a code + 256 b code

    def start_bundle(self):
        self._bundle_stats = self._statistics.create_accumulator()
        self._bundle_written = 0
        self._bundle_l[:] = 0
        self._bundle_ab[:] = 0

    def finish_bundle(self):
        if self._bundle_written:
            from apache_beam.transforms.window import GlobalWindows

            stats = self._bundle_stats
            stats["l_hist"] += self._bundle_l
            for index, counts in enumerate(self._bundle_ab):
                if counts.any():
                    _add_ab(stats["ab_hist"], self._split_names[index], counts.reshape(256, 256).T)
            yield beam.pvalue.TaggedOutput("stats", GlobalWindows.windowed_value(("partial", stats)))

    def _decode(self, data: bytes):
        """decode_and_crop, tried again after each of MEMORY_RETRY_WAITS_S on MemoryError; None if it persists."""
        from components.decode import decode_and_crop

        cfg = self._config
        for wait in (*MEMORY_RETRY_WAITS_S, None):
            try:
                return decode_and_crop(
                    data,
                    size=cfg.stored_size,
                    min_side=cfg.min_side,
                    max_pixels=cfg.max_pixels,
                    min_colorfulness=cfg.min_colorfulness,
                )
            except MemoryError:
                if wait is None:
                    return None
                Metrics.counter(_NAMESPACE, "decode_memory_retries").inc()
                time.sleep(wait)

    def _crop(self, ref: FileRef):
        """The file's (crop, colorfulness), or the rejection to emit."""
        from components.decode import RejectedImage

        try:
            with FileSystems.open(ref.path) as f:
                data = f.read()
        except Exception as e:  # the file vanished or the filesystem failed since it was hashed
            return reject(ref, "unreadable", f"The file cannot be read ({e}).")
        try:
            decoded = self._decode(data)
        except RejectedImage as e:
            return reject(ref, e.reason, e.detail)
        if decoded is None:
            tries = len(MEMORY_RETRY_WAITS_S) + 1
            return reject(ref, "out_of_memory", f"Decoding ran out of memory on all {tries} tries; ingest this file "
                          "on workers with more memory or lower --max_pixels.")
        return decoded

    def process(self, batch):
        from schemas import serialize_example

        cfg = self._config
        records: dict[str, list] = {}
        decoded_batch = []
        for sha256, ref in batch:
            decoded = self._crop(ref)
            if isinstance(decoded, beam.pvalue.TaggedOutput):
                yield decoded
            else:
                decoded_batch.append((sha256, ref, decoded))
        for sha256, ref, (crop, colorfulness) in decoded_batch:
            split = split_for(ref.source, ref.relpath, cfg.splits)
            codes = self._lab.encode(crop, self._codes, self._bundle_l, self._bundle_ab[self._split_index[split]])
            records.setdefault(split, []).append(serialize_example(
                lab_codes=codes,
                height=cfg.stored_size,
                width=cfg.stored_size,
                source=ref.source,
                path=ref.relpath,
                sha256=sha256,
                colorfulness=colorfulness,
            ))
            self._bundle_written += 1
            self._statistics.add_input(self._bundle_stats, ("written", split, ref.source, colorfulness, None, None))
        for split, split_records in records.items():
            Metrics.counter(_NAMESPACE, f"written_{split}").inc(len(split_records))
            yield split, split_records


# ---------------------------------------------------------------- statistics


def _add_ab(by_split: dict, split: str, counts: np.ndarray) -> None:
    if split in by_split:
        by_split[split] += counts
    else:
        by_split[split] = counts.astype(np.int64, copy=True)


def total_ab(acc: dict) -> np.ndarray:
    """The full-resolution ab histogram over every split."""
    return sum(acc["ab_hist"].values(), np.zeros((256, 256), np.int64))


class IngestStatistics(beam.CombineFn):
    """Combines per-file events (and per-bundle partial statistics) into counts, histograms and colourfulness."""

    def create_accumulator(self):
        return {
            "found": {},
            "over_limit": {},
            "written": {},  # (split, source) -> n
            "rejected": {},  # (source, reason) -> n
            "duplicates": {},  # source -> n
            "colorfulness_sum": {},  # split -> float
            "l_hist": np.zeros(256, np.int64),
            "ab_hist": {},  # split -> 256x256 counts of (a code, b code)
        }

    def add_input(self, acc, event):
        kind = event[0]
        if kind == "partial":
            return self._merge_into(acc, event[1])
        if kind == "found":
            _, source, n, over = event
            acc["found"][source] = acc["found"].get(source, 0) + n
            acc["over_limit"][source] = acc["over_limit"].get(source, 0) + over
        elif kind == "written":
            _, split, source, colorfulness, l_hist, ab_hist = event
            acc["written"][(split, source)] = acc["written"].get((split, source), 0) + 1
            acc["colorfulness_sum"][split] = acc["colorfulness_sum"].get(split, 0.0) + colorfulness
            if l_hist is not None:
                acc["l_hist"] += l_hist
                _add_ab(acc["ab_hist"], split, ab_hist)
        elif kind == "rejected":
            key = (event[1], event[2])
            acc["rejected"][key] = acc["rejected"].get(key, 0) + 1
        elif kind == "duplicate":
            acc["duplicates"][event[1]] = acc["duplicates"].get(event[1], 0) + 1
        return acc

    @staticmethod
    def _merge_into(merged, acc):
        for key in ("found", "over_limit", "written", "rejected", "duplicates", "colorfulness_sum"):
            for k, v in acc[key].items():
                merged[key][k] = merged[key].get(k, 0) + v
        merged["l_hist"] += acc["l_hist"]
        for split, counts in acc["ab_hist"].items():
            _add_ab(merged["ab_hist"], split, counts)
        return merged

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for acc in accumulators:
            self._merge_into(merged, acc)
        return merged

    def extract_output(self, acc):
        return acc


def summarize(acc: dict, config: IngestConfig) -> dict:
    """The statistics JSON from the combined accumulator."""
    from schemas import AB_OFFSET, L_SCALE, SCHEMA_VERSION

    split_names = [name for name, _ in config.splits]
    sources = sorted({name for name, _ in config.sources})
    written = acc["written"]
    per_split = {
        split: {
            "count": sum(n for (s, _), n in written.items() if s == split),
            "by_source": {src: written.get((split, src), 0) for src in sources},
        }
        for split in split_names
    }
    for split, entry in per_split.items():
        total = acc["colorfulness_sum"].get(split, 0.0)
        entry["mean_colorfulness"] = round(total / entry["count"], 3) if entry["count"] else None
    per_source = {}
    for src in sources:
        rejected = {reason: n for (s, reason), n in acc["rejected"].items() if s == src}
        per_source[src] = {
            "found": acc["found"].get(src, 0),
            "over_limit": acc["over_limit"].get(src, 0),
            "written": sum(n for (_, s), n in written.items() if s == src),
            "rejected": sum(rejected.values()),
            "rejected_by_reason": dict(sorted(rejected.items())),
            "duplicates": acc["duplicates"].get(src, 0),
        }
    totals = {key: sum(p[key] for p in per_source.values()) for key in ("found", "over_limit", "written", "rejected", "duplicates")}
    by_reason: dict = {}
    for (_, reason), n in acc["rejected"].items():
        by_reason[reason] = by_reason.get(reason, 0) + n
    n_written = totals["written"]
    total_cf = sum(acc["colorfulness_sum"].values())
    l_hist = acc["l_hist"]
    ab_hist = bin_ab(total_ab(acc))
    pixels = int(l_hist.sum())
    bins = 256 // AB_BIN
    centres = (np.arange(bins) * AB_BIN + (AB_BIN - 1) / 2.0) - AB_OFFSET
    mean_a = float((ab_hist.sum(axis=1) * centres).sum() / pixels) if pixels else None
    mean_b = float((ab_hist.sum(axis=0) * centres).sum() / pixels) if pixels else None
    return {
        "schema_version": SCHEMA_VERSION,
        "stored_size": config.stored_size,
        "files": {
            **totals,
            "rejected_by_reason": dict(sorted(by_reason.items())),
            "invariant": "written + rejected + duplicates = found",
            "invariant_holds": totals["written"] + totals["rejected"] + totals["duplicates"] == totals["found"],
        },
        "splits": per_split,
        "sources": per_source,
        "mean_colorfulness": round(total_cf / n_written, 3) if n_written else None,
        "pixels": pixels,
        "mean_ab": [mean_a, mean_b],
        "l_histogram": {
            "description": "pixel counts per quantised L code; L = code / %g" % L_SCALE,
            "counts": l_hist.tolist(),
        },
        "ab_histogram": {
            "description": "pixel counts over (a, b); row i covers a in [%d*i-128, %d*i-124), column j likewise for b"
            % (AB_BIN, AB_BIN),
            "bin_size": AB_BIN,
            "counts": ab_hist.tolist(),
        },
    }


def render_ab_histogram(ab_hist: np.ndarray, scale: int = 4) -> bytes:
    """PNG of the ab histogram, a to the right and b upwards: each bin in its colour at L=70, faded by log count.

    The colours come from LittleCMS (Pillow), not TensorFlow: the job's last step then imports no TensorFlow.
    """
    import io

    from PIL import Image, ImageCms

    from components.decode import lab_to_srgb_transform
    from schemas import AB_OFFSET, L_SCALE

    bins = ab_hist.shape[0]
    centres = np.round(np.arange(bins) * AB_BIN + AB_BIN / 2.0 - AB_OFFSET).astype(np.int8).view(np.uint8)
    a, b = np.meshgrid(centres, centres, indexing="ij")
    lab = np.stack([np.full_like(a, round(70 * L_SCALE)), a, b], axis=-1)
    rgb = np.asarray(ImageCms.applyTransform(Image.frombytes("LAB", (bins, bins), lab.tobytes()),
                                             lab_to_srgb_transform())) / 255.0
    weight = np.log1p(ab_hist.astype(np.float64))
    weight = (weight / weight.max() if weight.max() > 0 else weight)[..., None]
    picture = rgb * weight + 1.0 * (1.0 - weight)  # white where nothing is
    picture[bins // 2, :, :] = np.minimum(picture[bins // 2, :, :], 0.8)  # the a = 0 and b = 0 axes
    picture[:, bins // 2, :] = np.minimum(picture[:, bins // 2, :], 0.8)
    picture = picture.transpose(1, 0, 2)[::-1]  # as usually plotted: a to the right, b upwards
    image = Image.fromarray(np.round(picture * 255).astype(np.uint8)).resize(
        (bins * scale, bins * scale), Image.NEAREST
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_statistics(acc: dict, config: IngestConfig) -> dict:
    stats = summarize(acc, config)
    with FileSystems.create(FileSystems.join(config.output_dir, STATISTICS_FILE)) as f:
        f.write(json.dumps(stats, indent=1).encode("utf-8"))
    with FileSystems.create(FileSystems.join(config.output_dir, AB_HISTOGRAM_FILE)) as f:
        f.write(render_ab_histogram(bin_ab(total_ab(acc))))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{split: counts for split, counts in sorted(acc["ab_hist"].items())})
    with FileSystems.create(FileSystems.join(config.output_dir, AB_COUNTS_FILE)) as f:
        f.write(buffer.getvalue())
    return stats


# ---------------------------------------------------------------- the pipeline


class IngestImages(beam.PTransform):
    """Image folders -> LAB TFRecords per split, dead letters, duplicates and statistics."""

    def __init__(self, config: IngestConfig):
        super().__init__()
        self._config = config

    def expand(self, pbegin):
        cfg = self._config
        listed = (
            pbegin
            | "Sources" >> beam.Create(list(cfg.sources))
            | "ListImageFiles" >> beam.ParDo(ListImageFiles(cfg)).with_outputs("found", main="files")
        )
        hashed = (
            listed.files
            | "Distribute" >> beam.Reshuffle()
            | "ReadAndHash" >> beam.ParDo(ReadAndHash()).with_outputs("rejected", main="hashed")
        )
        unique = (
            hashed.hashed
            | "GroupByContent" >> beam.GroupByKey()
            | "DropDuplicates" >> beam.FlatMap(keep_first).with_outputs("duplicates", main="unique")
        )
        converted = (
            unique.unique
            | "Batch" >> beam.BatchElements(min_batch_size=BATCH_SIZES[0], max_batch_size=BATCH_SIZES[1])
            | "ToExamples" >> beam.ParDo(ToExamples(cfg)).with_outputs("rejected", "stats", main="examples")
        )

        for split, _ in cfg.splits:
            prefix = FileSystems.join(cfg.output_dir, EXAMPLES_DIR, split, "data")
            (
                converted.examples
                | f"Select_{split}" >> beam.FlatMap(lambda x, s=split: [x[1]] if x[0] == s else [])
                | f"Write_{split}" >> _write_tfrecords(prefix, cfg.gzip)
            )

        rejected = (hashed.rejected, converted.rejected) | "AllRejected" >> beam.Flatten()
        (
            rejected
            | "RejectedToJson" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
            | "WriteDeadLetter" >> _write_lines(FileSystems.join(cfg.output_dir, REJECTED_FILE))
        )
        (
            unique.duplicates
            | "DuplicatesToJson" >> beam.Map(lambda r: json.dumps(r, sort_keys=True))
            | "WriteDuplicates" >> _write_lines(FileSystems.join(cfg.output_dir, DUPLICATES_FILE))
        )
        events = (
            listed.found,
            converted.stats,
            rejected | "RejectedEvents" >> beam.Map(lambda r: ("rejected", r["source"], r["reason"])),
            unique.duplicates | "DuplicateEvents" >> beam.Map(lambda r: ("duplicate", r["source"])),
        ) | "AllEvents" >> beam.Flatten()
        return (
            events
            | "CombineStatistics" >> beam.CombineGlobally(IngestStatistics())
            | "WriteStatistics" >> beam.Map(write_statistics, cfg)
        )


def _write_tfrecords(prefix: str, gzip: bool):
    from components.tfrecord_sink import WriteToTFRecord

    return WriteToTFRecord(prefix, gzip=gzip)


def _write_lines(path: str):
    return beam.io.WriteToText(path, num_shards=1, shard_name_template="")


# ---------------------------------------------------------------- driver


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m components.example_gen",
        description="Ingest image folders into LAB TFRecords (train/eval/test) with schema, statistics and "
        "validation. Unknown flags (--runner, --direct_num_workers, --project, ...) go to Beam.",
    )
    parser.add_argument(
        "--data_dir",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="A folder of images, searched recursively (local or gs://). Repeat for several sources; "
        "NAME (default: the folder's name) is recorded in every example, e.g. lfw=/data/lfw.",
    )
    parser.add_argument("--output_dir", required=True, help="Where examples/, schema/, statistics/ and rejected.jsonl go.")
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="[NAME=]N",
        help="Take at most N files per source (a stable sample by path hash); NAME=N for one source. "
        "The report used 1920.",
    )
    parser.add_argument("--stored_size", type=int, default=250, help="Side of the stored square crop (default 250, "
                        "LFW's own size and the report's minimum side, so nothing is upsampled; training "
                        "random-crops 224 out of it).")
    parser.add_argument("--min_side", type=int, default=250, help="Reject images whose shorter side is below this "
                        "(default 250, as the report).")
    parser.add_argument("--max_pixels", type=int, default=64_000_000, help="Reject images whose header claims more "
                        "pixels than this (decompression bombs; default 64 million).")
    parser.add_argument("--min_colorfulness", type=float, default=3.0, help="Reject images less colourful than this "
                        "(Hasler-Suesstrunk; gray is 0, default 3): they teach the model to desaturate.")
    parser.add_argument("--splits", default=SPLITS_DEFAULT, help=f"Split names and weights (default {SPLITS_DEFAULT}).")
    parser.add_argument("--compression", choices=("gzip", "none"), default="none",
                        help="TFRecord file compression (default none: the loader reads uncompressed records 3x "
                        "faster; gzip halves the disk, for storage- or network-bound reads).")
    parser.add_argument("--validation", choices=("all", "sample", "none"), default="all",
                        help="Check every written record against the schema, a sample, or none (default all).")
    parser.add_argument("--validation_sample_rate", type=float, default=0.1,
                        help="Fraction of records checked with --validation=sample (default 0.1).")
    parser.add_argument("--overwrite", action="store_true", help="Replace examples already in --output_dir.")
    return parser


def config_from_args(args: argparse.Namespace) -> IngestConfig:
    for flag in ("stored_size", "min_side", "max_pixels"):
        if getattr(args, flag) < 1:
            raise IngestError(f"--{flag} must be a positive number, got {getattr(args, flag)}.")
    return IngestConfig(
        sources=parse_data_dirs(args.data_dir),
        output_dir=args.output_dir.rstrip("/"),
        limits=parse_limits(args.limit),
        stored_size=args.stored_size,
        min_side=args.min_side,
        max_pixels=args.max_pixels,
        min_colorfulness=args.min_colorfulness,
        splits=parse_splits(args.splits),
        gzip=args.compression == "gzip",
    )


def _inside(path: str, folder: str) -> bool:
    if "://" not in path and "://" not in folder:
        path, folder = os.path.abspath(path), os.path.abspath(folder)
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _check_paths(config: IngestConfig, overwrite: bool) -> None:
    for name, root in config.sources:
        if not FileSystems.exists(root):
            raise IngestError(f"data dir {root!r} ({name}) does not exist; pass --data_dir NAME=PATH of a folder of images.")
        if _inside(config.output_dir, root):
            raise IngestError(
                f"--output_dir {config.output_dir!r} is inside data dir {root!r}, so a later run would ingest "
                "its own outputs; choose an output dir outside it."
            )
    examples = FileSystems.join(config.output_dir, EXAMPLES_DIR)
    existing = FileSystems.match([FileSystems.join(examples, "**")])[0].metadata_list if FileSystems.exists(examples) else []
    if existing:
        if not overwrite:
            raise IngestError(
                f"{examples} already holds {len(existing)} files; choose a new --output_dir or pass --overwrite."
            )
        FileSystems.delete([examples])


def _print_counters(result) -> None:
    try:
        counters = result.metrics().query()["counters"]
    except Exception:  # some runners do not report metrics; the statistics file has the same counts
        return
    totals: dict = {}
    for counter in counters:
        if counter.key.metric.namespace == _NAMESPACE:
            totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (counter.committed or counter.attempted or 0)
    if totals:
        print("Beam counters: " + ", ".join(f"{k}={v}" for k, v in sorted(totals.items())))


def run_ingest(config: IngestConfig, beam_args: list[str], *, overwrite: bool = False) -> dict:
    """Run the Beam job and return the statistics; raises IngestError when nothing usable came out."""
    _check_paths(config, overwrite)
    options = PipelineOptions(beam_args, save_main_session=False)
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "IngestImages" >> IngestImages(config)
    result = pipeline.run()
    result.wait_until_finish()
    _print_counters(result)
    with FileSystems.open(FileSystems.join(config.output_dir, STATISTICS_FILE)) as f:
        stats = json.loads(f.read().decode("utf-8"))
    files = stats["files"]
    found_by_source = {name: stats["sources"][name]["found"] for name, _ in config.sources}
    empty = [dict(config.sources)[name] for name, n in found_by_source.items() if n == 0]
    if empty:
        raise IngestError(
            f"no image files ({', '.join(IMAGE_EXTENSIONS)}) were found under {', '.join(empty)}; "
            "point --data_dir at a folder of images."
        )
    if not files["invariant_holds"]:
        raise IngestError(
            f"counts do not add up: written {files['written']} + rejected {files['rejected']} + duplicates "
            f"{files['duplicates']} != found {files['found']}; this is a bug, please report it with {STATISTICS_FILE}."
        )
    if files["written"] == 0:
        raise IngestError(
            f"all {files['found']} files were rejected or duplicates; see {FileSystems.join(config.output_dir, REJECTED_FILE)}."
        )
    from schemas import schema_pbtxt

    with FileSystems.create(FileSystems.join(config.output_dir, SCHEMA_FILE)) as f:
        f.write(schema_pbtxt(config.stored_size).encode("utf-8"))
    return stats


def format_summary(stats: dict, output_dir: str) -> str:
    files = stats["files"]
    splits = ", ".join(f"{name} {entry['count']}" for name, entry in stats["splits"].items())
    reasons = ", ".join(f"{k} {v}" for k, v in files["rejected_by_reason"].items()) or "none"
    over = f" ({files['over_limit']} more over --limit, not read)" if files["over_limit"] else ""
    return "\n".join(
        [
            f"Found {files['found']} image files{over}: written {files['written']} + rejected {files['rejected']}"
            f" + duplicates {files['duplicates']} = {files['written'] + files['rejected'] + files['duplicates']}"
            f" ({'adds up' if files['invariant_holds'] else 'DOES NOT ADD UP'}).",
            f"Splits: {splits}. Rejected: {reasons}. Mean colourfulness {stats['mean_colorfulness']}.",
            f"Examples: {FileSystems.join(output_dir, EXAMPLES_DIR)}/{{{','.join(stats['splits'])}}}/",
            f"Schema: {FileSystems.join(output_dir, SCHEMA_FILE)}  Statistics: {FileSystems.join(output_dir, STATISTICS_FILE)}",
            f"Dead letters: {FileSystems.join(output_dir, REJECTED_FILE)}",
        ]
    )


def run(argv: list[str] | None = None) -> int:
    """CLI entry point: ingest, then validate; returns the exit status."""
    from components import validator

    parser = _build_parser()
    args, beam_args = parser.parse_known_args(argv)
    try:
        config = config_from_args(args)
        stats = run_ingest(config, beam_args, overwrite=args.overwrite)
        print(format_summary(stats, config.output_dir))
        if args.validation != "none":
            rate = 1.0 if args.validation == "all" else args.validation_sample_rate
            report = validator.run_validation(config.output_dir, beam_args, sample_rate=rate, stored_size=config.stored_size)
            print(validator.format_report(report, config.output_dir))
    except (IngestError, validator.ValidationError) as e:
        print(f"example_gen: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    return run(argv)


if __name__ == "__main__":
    # Run through the importable module, so Beam pickles the DoFns by reference to it
    # rather than by value from __main__ (which multi-process and remote workers cannot use).
    from components.example_gen import main as _main

    sys.exit(_main())
