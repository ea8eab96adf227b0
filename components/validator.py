"""validator: read written records back and check them against the schema.

The ExampleValidator of this pipeline: every record (or a stable sample)
is parsed and checked with schemas.check_example; record counts per split
are compared with the statistics example_gen wrote. Anomalies go to
anomalies.json; any anomaly fails the stage. Records of another schema
version (statistics.json's schema_version) are refused before any is read.

    python -m components.validator --output_dir /tmp/ingest [--sample_rate 0.1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from components.tfrecord_sink import CorruptRecordError, ReadTFRecords
from schemas.artifacts import ANOMALIES_FILE, EXAMPLES_DIR, STATISTICS_FILE

MAX_EXAMPLES_PER_PROBLEM = 5


class ValidationError(Exception):
    """Records do not match the schema; the message says where to look."""


def _record_fraction(record: bytes) -> float:
    """A number in [0, 1) fixed by the record's bytes: the same sample on every run."""
    return int.from_bytes(hashlib.sha256(record).digest()[:8], "big") / 2.0**64


class CheckRecords(beam.DoFn):
    """(file, serialized) -> (problem, file) for each problem found, and ('ok', split) per record."""

    def __init__(self, examples_dir: str, sample_rate: float, stored_size: int | None):
        self._examples_dir = examples_dir.rstrip("/") + "/"
        self._sample_rate = sample_rate
        self._stored_size = stored_size

    def process(self, item):
        from schemas import check_example

        filename, record = item
        relative = filename[len(self._examples_dir):] if filename.startswith(self._examples_dir) else filename
        split = relative.split("/", 1)[0]
        yield ("read", split, None)
        if self._sample_rate < 1.0 and _record_fraction(record) >= self._sample_rate:
            return
        Metrics.counter("validator", "records_checked").inc()
        problems = check_example(record, stored_size=self._stored_size)
        if problems:
            Metrics.counter("validator", "records_with_anomalies").inc()
        yield ("checked", split, None)
        for problem in problems:
            yield ("problem", problem, relative)


class _Tally(beam.CombineFn):
    def create_accumulator(self):
        return {"read": {}, "checked": {}, "problems": {}}

    def add_input(self, acc, event):
        kind, key, where = event
        if kind == "problem":
            entry = acc["problems"].setdefault(key, [0, []])
            entry[0] += 1
            if len(entry[1]) < MAX_EXAMPLES_PER_PROBLEM and where not in entry[1]:
                entry[1].append(where)
        else:
            acc[kind][key] = acc[kind].get(key, 0) + 1
        return acc

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for acc in accumulators:
            for kind in ("read", "checked"):
                for k, v in acc[kind].items():
                    merged[kind][k] = merged[kind].get(k, 0) + v
            for problem, (n, files) in acc["problems"].items():
                entry = merged["problems"].setdefault(problem, [0, []])
                entry[0] += n
                entry[1] = sorted(set(entry[1]) | set(files))[:MAX_EXAMPLES_PER_PROBLEM]
        return merged

    def extract_output(self, acc):
        return acc


def run_validation(output_dir: str, beam_args: list[str], *, sample_rate: float = 1.0,
                   stored_size: int | None = None, report_dir: str | None = None) -> dict:
    """Check the records under output_dir/examples; write report_dir/anomalies.json (default: output_dir, the
    examples' own dir); raise ValidationError on anomalies."""
    if not 0.0 < sample_rate <= 1.0:
        raise ValidationError(f"the sample rate must be in (0, 1], got {sample_rate}.")
    examples_dir = FileSystems.join(output_dir, EXAMPLES_DIR)
    statistics_path = FileSystems.join(output_dir, STATISTICS_FILE)
    report_dir = report_dir or output_dir
    if not FileSystems.exists(statistics_path):
        raise ValidationError(f"{statistics_path} does not exist; run example_gen on {output_dir} first.")
    with FileSystems.open(statistics_path) as f:
        stats = json.loads(f.read().decode("utf-8"))
    from schemas import SCHEMA_VERSION, old_records_error

    found = stats.get("schema_version")
    if found != SCHEMA_VERSION:
        raise ValidationError(old_records_error(examples_dir, found))
    stored_size = stored_size or stats.get("stored_size")
    expected = {split: entry["count"] for split, entry in stats["splits"].items()}
    patterns = [FileSystems.join(examples_dir, split, "*.tfrecord*") for split, n in expected.items() if n]

    pipeline = beam.Pipeline(options=PipelineOptions(beam_args))
    _ = (
        pipeline
        | "Patterns" >> beam.Create(patterns)
        | "ReadRecords" >> ReadTFRecords()
        | "CheckRecords" >> beam.ParDo(CheckRecords(examples_dir, sample_rate, stored_size))
        | "Tally" >> beam.CombineGlobally(_Tally())
        | "WriteAnomalies" >> beam.Map(_write_report, report_dir, expected, sample_rate)
    )
    try:
        pipeline.run().wait_until_finish()
    except Exception as e:
        damaged = CorruptRecordError.sentence_in(e)
        if damaged is None:
            raise
        raise ValidationError(damaged) from None
    with FileSystems.open(FileSystems.join(report_dir, ANOMALIES_FILE)) as f:
        report = json.loads(f.read().decode("utf-8"))
    if report["anomalies"]:
        first = report["anomalies"][0]
        raise ValidationError(
            f"{len(report['anomalies'])} kinds of schema anomaly in the written records, e.g. "
            f"'{first['problem']}' ({first['count']} records, first in {first['files'][0] if first['files'] else '?'}); "
            f"see {FileSystems.join(report_dir, ANOMALIES_FILE)}."
        )
    return report


def _write_report(acc: dict, output_dir: str, expected: dict, sample_rate: float) -> dict:
    anomalies = [
        {"problem": problem, "count": n, "files": files}
        for problem, (n, files) in sorted(acc["problems"].items(), key=lambda kv: -kv[1][0])
    ]
    for split, n in sorted(expected.items()):
        read = acc["read"].get(split, 0)
        if read != n:
            anomalies.append(
                {"problem": f"split '{split}' holds {read} records, the statistics say {n}", "count": abs(read - n), "files": []}
            )
    report = {
        "sample_rate": sample_rate,
        "records_read": dict(sorted(acc["read"].items())),
        "records_checked": dict(sorted(acc["checked"].items())),
        "anomalies": anomalies,
    }
    with FileSystems.create(FileSystems.join(output_dir, ANOMALIES_FILE)) as f:
        f.write(json.dumps(report, indent=1).encode("utf-8"))
    return report


def format_report(report: dict, output_dir: str) -> str:
    checked = sum(report["records_checked"].values())
    read = sum(report["records_read"].values())
    return (
        f"Validated {checked} of {read} records against the schema: "
        f"{len(report['anomalies'])} anomalies ({FileSystems.join(output_dir, ANOMALIES_FILE)})."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m components.validator",
        description="Check the records example_gen wrote against the schema. Unknown flags go to Beam.",
    )
    parser.add_argument("--output_dir", required=True, help="example_gen's --output_dir.")
    parser.add_argument("--sample_rate", type=float, default=1.0, help="Fraction of records to check (default 1).")
    parser.add_argument("--report_dir", help="Where anomalies.json goes (default: --output_dir).")
    args, beam_args = parser.parse_known_args(argv)
    try:
        report = run_validation(args.output_dir, beam_args, sample_rate=args.sample_rate, report_dir=args.report_dir)
    except ValidationError as e:
        print(f"validator: {e}", file=sys.stderr)
        return 2
    print(format_report(report, args.report_dir or args.output_dir))
    return 0


if __name__ == "__main__":
    # Run through the importable module, so Beam pickles the DoFns by reference to it
    # rather than by value from __main__ (which multi-process and remote workers cannot use).
    from components.validator import main as _main

    sys.exit(_main())
