"""Where example_gen puts its outputs under --output_dir; every stage that reads them uses these names."""

EXAMPLES_DIR = "examples"  # examples/<split>/data-*-of-*.tfrecord.gz
SCHEMA_FILE = "schema/schema.pbtxt"
STATISTICS_FILE = "statistics/statistics.json"
AB_HISTOGRAM_FILE = "statistics/ab_histogram.png"
REJECTED_FILE = "rejected.jsonl"
DUPLICATES_FILE = "duplicates.jsonl"
ANOMALIES_FILE = "anomalies.json"
