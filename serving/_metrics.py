"""Prometheus text metrics, named as TF Serving exports them (served when --monitoring_config_file enables it).

    :tensorflow:serving:request_count{model_name, signature_name, entrypoint, status}     counter
    :tensorflow:serving:request_latency{model_name, signature_name, entrypoint}          histogram, microseconds
    :tensorflow:serving:batching_session:processed_batch_size{model_name, signature_name} histogram, rows
    :tensorflow:serving:model_version_state{model_name, version, state}                   gauge, 1 for the current state

Requests are labelled only with names the server serves: a model that is not loaded or a signature it
does not have counts under "unknown", so clients cannot grow the page by sending new names.
"""

from __future__ import annotations

import threading
from collections import defaultdict

PREFIX = ":tensorflow:serving:"
LATENCY_BUCKETS_US = tuple(10 * 1.8 ** i for i in range(33))  # TF Serving's request_latency buckets
BATCH_BUCKETS = tuple(2 ** i for i in range(14))
UNKNOWN = "unknown"


def request_labels(servable, signature_name: str) -> tuple[str, str]:
    """(model, signature) labels for a request: the served names, else UNKNOWN; `servable` None when it
    named no loaded model."""
    if servable is None:
        return UNKNOWN, UNKNOWN
    return servable.name, signature_name if signature_name in servable.signatures else UNKNOWN


def _labels(names: tuple[str, ...], values: tuple, extra: str = "") -> str:
    escape = lambda v: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")  # noqa: E731
    parts = [f'{n}="{escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}"


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break
        self.total += value
        self.count += 1


class Metrics:
    """Thread-safe counters and histograms, rendered in the Prometheus text exposition format."""

    REQUEST_LABELS = ("model_name", "signature_name", "entrypoint", "status")
    LATENCY_LABELS = ("model_name", "signature_name", "entrypoint")
    BATCH_LABELS = ("model_name", "signature_name")
    STATE_LABELS = ("model_name", "version", "state")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple, int] = defaultdict(int)
        self._latency: dict[tuple, _Histogram] = {}
        self._batches: dict[tuple, _Histogram] = {}
        self._states: dict[tuple[str, int], str] = {}

    def observe_request(self, model: str, signature: str, entrypoint: str, status: str, seconds: float) -> None:
        with self._lock:
            self._requests[(model, signature, entrypoint, status)] += 1
            key = (model, signature, entrypoint)
            self._latency.setdefault(key, _Histogram(LATENCY_BUCKETS_US)).observe(seconds * 1e6)

    def observe_batch(self, model: str, signature: str, rows: int) -> None:
        with self._lock:
            self._batches.setdefault((model, signature), _Histogram(BATCH_BUCKETS)).observe(rows)

    def set_version_state(self, model: str, version: int, state: str) -> None:
        with self._lock:
            self._states[(model, version)] = state

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            name = PREFIX + "request_count"
            lines += [f"# HELP {name} Predict requests by model, signature, API and status.", f"# TYPE {name} counter"]
            lines += [f"{name}{_labels(self.REQUEST_LABELS, k)} {v}" for k, v in sorted(self._requests.items())]
            self._render_histograms(lines, PREFIX + "request_latency", "Predict latency in microseconds.",
                                    self.LATENCY_LABELS, self._latency)
            self._render_histograms(lines, PREFIX + "batching_session:processed_batch_size",
                                    "Rows per model call.", self.BATCH_LABELS, self._batches)
            name = PREFIX + "model_version_state"
            lines += [f"# HELP {name} 1 for each model version's current state.", f"# TYPE {name} gauge"]
            lines += [f"{name}{_labels(self.STATE_LABELS, (m, v, s))} 1"
                      for (m, v), s in sorted(self._states.items())]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _render_histograms(lines: list[str], name: str, help_text: str, label_names: tuple[str, ...],
                           histograms: dict[tuple, _Histogram]) -> None:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for key, histogram in sorted(histograms.items()):
            cumulative = 0
            for bound, count in zip(histogram.buckets, histogram.counts):
                cumulative += count
                le = 'le="%g"' % bound
                lines.append(f"{name}_bucket{_labels(label_names, key, le)} {cumulative}")
            le = 'le="+Inf"'
            lines.append(f"{name}_bucket{_labels(label_names, key, le)} {histogram.count}")
            lines.append(f"{name}_sum{_labels(label_names, key)} {histogram.total:g}")
            lines.append(f"{name}_count{_labels(label_names, key)} {histogram.count}")
