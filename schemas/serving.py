"""The serving SavedModel's contract: signature, tensor and file names and limits, defined once.

components.export builds the graph with these names; the pusher validates it, the evaluator loads a
baseline's `predict_ab`, and serving.client calls `serving_default`. Pure constants: no TensorFlow import.
"""

SERVING_SIGNATURE = "serving_default"
"""Encoded images -> colorized PNGs: `image_bytes` (DT_STRING [-1]) -> `colorized_bytes` (DT_STRING [-1])."""
PREDICT_AB_SIGNATURE = "predict_ab"
"""L -> ab at the training size: `l` (DT_FLOAT [-1, S, S, 1], 0..100) -> `ab` (DT_FLOAT [-1, S, S, 2], LAB units)."""
IMAGE_BYTES = "image_bytes"
COLORIZED_BYTES = "colorized_bytes"
L_INPUT = "l"
AB_OUTPUT = "ab"

MAX_PIXELS = 50_000_000
"""Largest image `serving_default` accepts (8000 x 6000 = 48 MP passes): a bound on one request's memory.
The evaluator skips historical photos over it, as the serving graph refuses them."""
SERVED_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
"""Files whose formats `serving_default` decodes (JPEG, PNG, GIF, BMP): what serving.client sends from a folder."""

MAX_VERSION = 2**63 - 1
"""Largest version folder name a server reads (versions are int64 in TF Serving's protos); larger ones are skipped."""
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
"""Where TF Serving looks for warmup requests, relative to the version dir."""
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
"""TF Serving's Prometheus path (PrometheusExporter::kPrometheusPath), set in the pusher's monitoring.config."""
