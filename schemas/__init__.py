"""The data contract: one tf.train.Example per image, defined once here.

Every stage that writes or reads records (example_gen, the validator, the
tf.data loader, the evaluator, the serving graph) uses these constants and
functions; no other module knows the keys or the LAB quantisation.
"""

from schemas.artifacts import (  # noqa: F401
    AB_HISTOGRAM_FILE,
    ANOMALIES_FILE,
    BATCHING_FILE,
    BEST_HPARAMS_FILE,
    BLESSED_MARKER,
    BLESSING_FILE,
    DUPLICATES_FILE,
    EXAMPLES_DIR,
    GRID_FILE,
    HISTORICAL_DIR,
    IMAGE_EXTENSIONS,
    METRICS_FILE,
    MODEL_FILE,
    MODELS_CONFIG_FILE,
    MONITORING_FILE,
    NOT_BLESSED_MARKER,
    PUSH_RECORD_FILE,
    REJECTED_FILE,
    SCHEMA_FILE,
    STATISTICS_FILE,
    TRAIN_SUMMARY_FILE,
)
from schemas.examples import (  # noqa: F401
    AB_OFFSET,
    AB_SCALE,
    COLORFULNESS_KEY,
    EMBEDDING_KEY,
    EMBEDDING_SIZE,
    FEATURES,
    HEIGHT_KEY,
    IMAGE_KEY,
    PATH_KEY,
    SHA256_KEY,
    SOURCE_KEY,
    WIDTH_KEY,
    L_MAX,
    L_SCALE,
    SCHEMA_VERSION,
    FeatureDef,
    check_example,
    decode_lab,
    dequantize_lab,
    encode_png,
    feature_spec,
    make_example,
    serialize_example,
    parse_examples,
    quantize_lab,
    schema_pbtxt,
    tfmd_schema,
)
