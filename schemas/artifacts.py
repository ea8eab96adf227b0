"""File names of the stages' outputs under their --output_dir; every stage that reads them uses these names."""

EXAMPLES_DIR = "examples"  # examples/<split>/data-*-of-*.tfrecord.gz
SCHEMA_FILE = "schema/schema.pbtxt"
STATISTICS_FILE = "statistics/statistics.json"
AB_HISTOGRAM_FILE = "statistics/ab_histogram.png"
REJECTED_FILE = "rejected.jsonl"
DUPLICATES_FILE = "duplicates.jsonl"
ANOMALIES_FILE = "anomalies.json"

# trainer and tuner outputs, named here so the pipeline can build command lines without importing TensorFlow
MODEL_FILE = "model.keras"
BEST_HPARAMS_FILE = "best_hparams.json"
