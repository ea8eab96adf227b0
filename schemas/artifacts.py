"""File names of the stages' outputs under their --output_dir; every stage that reads them uses these names."""

EXAMPLES_DIR = "examples"  # examples/<split>/data-*-of-*.tfrecord (.tfrecord.gz with --compression gzip)
SCHEMA_FILE = "schema/schema.pbtxt"
STATISTICS_FILE = "statistics/statistics.json"
AB_HISTOGRAM_FILE = "statistics/ab_histogram.png"
AB_COUNTS_FILE = "statistics/ab_counts.npz"  # per split: 256x256 pixel counts of (a code, b code), as histograms()
REJECTED_FILE = "rejected.jsonl"
DUPLICATES_FILE = "duplicates.jsonl"
ANOMALIES_FILE = "anomalies.json"

# statistics stage outputs: the training split's ab prior (components.statistics)
PRIOR_FILE = "prior.json"  # bins, smoothed distribution, rebalancing weights (colorbins.ColorPrior)
PRIOR_PICTURE_FILE = "prior.png"

# trainer and tuner outputs, named here so the pipeline can build command lines without importing TensorFlow
MODEL_FILE = "model.keras"
BEST_HPARAMS_FILE = "best_hparams.json"
TRAIN_SUMMARY_FILE = "train_summary.json"  # next to model.keras; holds the training crop side ("image_size")

# evaluator outputs, read by the pusher
METRICS_FILE = "metrics.json"
BLESSING_FILE = "blessing.json"
BLESSED_MARKER = "BLESSED"  # an empty file: the evaluator blessed the model
NOT_BLESSED_MARKER = "NOT_BLESSED"
GRID_FILE = "test_grid.png"  # gray | predicted | truth rows of the first test images
HISTORICAL_DIR = "historical"  # historical/<stem>.png: the --historical_dir photos, colorized

# pusher outputs: under its --serving_dir (TF Serving's config files) and its record
MODELS_CONFIG_FILE = "models.config"  # tensorflow_model_server --model_config_file
BATCHING_FILE = "batching_parameters.txt"  # --batching_parameters_file
MONITORING_FILE = "monitoring.config"  # --monitoring_config_file
PUSH_RECORD_FILE = "pushed.json"  # in the evaluation dir (or the pusher's --output)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""Image files example_gen ingests and the evaluator colorizes from a folder (case-insensitive suffixes)."""
