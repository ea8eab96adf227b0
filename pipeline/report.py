"""The run report: one self-contained HTML page per run, the page a person opens first.

    python -m pipeline.report out/runs/latest                 # rebuild runs/<run_id>/report.html for any past run
    python -m pipeline.report out                             # the same: the latest run under an output dir
    python -m pipeline.report out/runs/<run_id> --output /tmp/report.html

`python -m pipeline.run` writes runs/<run_id>/report.html at the end of every
run, failed ones included; the last Kubeflow step writes it as its HTML output
artifact. The page is built only from the run's manifest and the files the
stages already wrote (statistics.json, rejected.jsonl, the tuner's trials,
train_summary.json and the training log, metrics.json, blessing.json, the
test grid and historical photos, pushed.json): sections Run, Data, Tuning,
Training, Verdict, Pictures and Serving. Pictures are inlined as data URIs,
with no script and nothing fetched, so it reads the same in any browser, from
a mail attachment or in the Kubeflow UI. Every text taken from an artifact is
HTML-escaped (file names can hold anything). A piece that is missing (a stage
that failed, was skipped or did not run) says so in its section; a section
that cannot be read says why and the rest of the page is still built.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import posixpath
import shlex
import sys
import time
from typing import Any, Callable, Iterable, Optional, Sequence

from pipeline import manifest as mf
from schemas import artifacts

MAX_INLINE_BYTES = 1_500_000
"""A picture larger than this is re-encoded as a JPEG (at most MAX_PICTURE_SIDE) before it is inlined."""
MAX_PICTURE_SIDE = 2400
HISTORICAL_SHOWN = 24
HISTORICAL_SIDE = 360
REJECTED_SHOWN = 12
SECTIONS = (("run", "Run"), ("data", "Data"), ("tuning", "Tuning"), ("training", "Training"),
            ("verdict", "Verdict"), ("pictures", "Pictures"), ("serving", "Serving"))
METRICS = (  # metrics.json key, label, format
    ("psnr", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"), ("ab_mse", "ab mean squared error", "{:.1f}"),
    ("colorfulness", "colourfulness", "{:.1f}"), ("colorfulness_truth", "colourfulness of the truth", "{:.1f}"),
    ("colorfulness_ratio", "colourfulness / truth", "{:.0%}"), ("colorfulness_diff", "colourfulness difference",
                                                                 "{:+.2f}"),
    ("auc", "AuC of ab error 0..150", "{:.3f}"), ("auc_rebalanced", "AuC rebalanced", "{:.3f}"),
)


class ReportError(Exception):
    """A run dir the report cannot be built for; one sentence."""


# ---------------------------------------------------------------- HTML building blocks


class Html(str):
    """A fragment that is already HTML; every other str put into the page is escaped."""


def esc(value: Any) -> Html:
    return value if isinstance(value, Html) else Html(html.escape("" if value is None else str(value), quote=True))


def tag(name: str, *children: Any, **attrs: Any) -> Html:
    """<name attrs>children</name>; attribute values and text children are escaped (class_ -> class)."""
    text = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    return Html(f"<{name}{text}>{''.join(esc(c) for c in children)}</{name}>")


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]], class_: Optional[str] = None) -> Html:
    """A table; a row may be (cells, {attrs of the tr}); a cell may be an Html <td> fragment already."""
    body = []
    for row in rows:
        cells, attrs = (row if isinstance(row, tuple) and len(row) == 2 and isinstance(row[1], dict) else (row, {}))
        body.append(tag("tr", Html("".join(c if isinstance(c, Html) and c.startswith("<td") else tag("td", c)
                                           for c in cells)), **attrs))
    return tag("table", tag("thead", tag("tr", Html("".join(tag("th", h) for h in headers)))),
               tag("tbody", Html("".join(body))), class_=class_)


def facts(pairs: Iterable[tuple[str, Any]]) -> Html:
    """A definition list of label: value pairs (None values left out)."""
    return tag("dl", Html("".join(tag("dt", k) + tag("dd", v) for k, v in pairs if v is not None)), class_="facts")


def note(text: Any, kind: str = "missing") -> Html:
    return tag("p", text, class_=f"note {kind}")


def pill(text: str, kind: str) -> Html:
    return tag("span", text, class_=f"pill {kind}")


def short(fingerprint: Optional[str], chars: int = 12) -> Html:
    if not fingerprint:
        return esc("")
    return tag("code", fingerprint[:chars], title=fingerprint)


def number(value: Any, fmt: str = "{:,}") -> str:
    if value is None:
        return "—"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def seconds(value: Optional[float]) -> str:
    if value is None:
        return ""
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def image(data: bytes, alt: str, *, max_side: int = MAX_PICTURE_SIDE, class_: Optional[str] = None) -> Html:
    """An <img> with the picture inlined; a large one is re-encoded as a JPEG first."""
    mime = "image/png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    if len(data) > MAX_INLINE_BYTES:
        from PIL import Image

        picture = Image.open(io.BytesIO(data)).convert("RGB")
        picture.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=88)
        data, mime = buffer.getvalue(), "image/jpeg"
    src = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return Html(f'<img src="{src}" alt="{esc(alt)}"' + (f' class="{esc(class_)}"' if class_ else "") + ">")


def figure(picture: Html, caption: Any) -> Html:
    return tag("figure", picture, tag("figcaption", caption))


# ---------------------------------------------------------------- charts (matplotlib, Agg)


def _plot(width: float, height: float, draw: Callable[[Any], None], alt: str) -> Html:
    """A matplotlib figure drawn by draw(fig), inlined as a PNG (no pyplot: no global state, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return image(buffer.getvalue(), alt, class_="chart")


def _style(ax: Any) -> None:
    ax.grid(True, color="#e3e6ea", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def l_histogram_chart(counts: Sequence[float]) -> Html:
    total = float(sum(counts)) or 1.0
    lightness = [code / 2.55 for code in range(len(counts))]
    share = [100.0 * c / total for c in counts]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        ax.fill_between(lightness, share, step="mid", color="#6b7785", alpha=0.8, linewidth=0)
        ax.set_xlim(0, 100)
        ax.set_xlabel("lightness L (0 black .. 100 white)")
        ax.set_ylabel("% of pixels")
        _style(ax)

    return _plot(4.6, 2.6, draw, "histogram of the lightness L over every stored pixel")


def training_chart(rows: list[dict[str, float]], best_epoch: Optional[int], resumed_from: int) -> Html:
    """One panel per metric the log holds (loss first), training and validation curves over epochs."""
    names = [k for k in rows[0] if k != "epoch" and not k.startswith("val_")]
    names.sort(key=lambda k: (k != "loss", k))
    epochs = [int(float(r["epoch"])) + 1 for r in rows]

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, name in zip(axes, names):
            ax.plot(epochs, [float(r[name]) for r in rows], marker="o", markersize=3, color="#2f6fb5",
                    label=f"training {name}")
            if f"val_{name}" in rows[0]:
                ax.plot(epochs, [float(r[f"val_{name}"]) for r in rows], marker="o", markersize=3,
                        color="#d9822b", label=f"validation {name}")
            if best_epoch:
                ax.axvline(best_epoch, color="#2e7d32", linestyle="--", linewidth=1, label=f"best epoch {best_epoch}")
            if resumed_from:
                ax.axvline(resumed_from + 0.5, color="#8e44ad", linestyle=":", linewidth=1.2,
                           label=f"resumed after epoch {resumed_from}")
            ax.set_xlabel("epoch")
            ax.set_title(name, fontsize=10)
            if len(epochs) <= 20:
                ax.set_xticks(epochs)
            _style(ax)
            ax.legend(fontsize=8, frameon=False)

    return _plot(min(11.0, 4.6 * len(names)), 3.0, draw, "training and validation curves over the epochs")


# ---------------------------------------------------------------- reading the run


class Run:
    """A run's manifest (a dict as manifest.json holds it) and the stage artifacts it points to."""

    def __init__(self, manifest: dict[str, Any]):
        self.manifest = manifest
        self.stages: dict[str, dict[str, Any]] = manifest.get("stages", {})
        self.config: dict[str, Any] = manifest.get("config", {})

    def has(self, stage: str) -> bool:
        """The stage produced its outputs in this run or an earlier one (cached)."""
        record = self.stages.get(stage)
        return bool(record and record.get("status") in ("succeeded", "cached") and self.dir(stage))

    def dir(self, stage: str) -> Optional[str]:
        record = self.stages.get(stage) or {}
        return (record.get("outputs") or {}).get("dir") or record.get("output_dir")

    def path(self, stage: str, relative: str) -> str:
        return mf.join(self.dir(stage), *relative.split("/"))

    def json(self, stage: str, relative: str) -> Any:
        return json.loads(mf.read_text(self.path(stage, relative)))

    def exists(self, stage: str, relative: str) -> bool:
        return bool(self.dir(stage)) and mf.exists(self.path(stage, relative))

    def why_missing(self, stage: str) -> Html:
        """One sentence on why a stage's artifacts are not in this report."""
        record = self.stages.get(stage)
        if record is None:
            return esc(f"This run has no {stage} stage.")
        status = record.get("status")
        if status == "skipped":
            return esc(f"The {stage} stage was skipped: {record.get('skip_reason')}.")
        if status == "failed":
            return esc(f"The {stage} stage failed: {record.get('error')}")
        if status == "running":
            return esc(f"The {stage} stage was still running when the run stopped (interrupted).")
        failed = self.manifest.get("failed_stage")
        return esc(f"The {stage} stage did not run" + (f": the run stopped at stage {failed}." if failed else "."))

    def provenance(self, stage: str) -> Html:
        """'cached from run X' for a stage this run took from the cache, else nothing."""
        record = self.stages.get(stage) or {}
        if record.get("status") == "cached":
            return note(f"The {stage} stage came from the cache: produced by run {record.get('produced_by_run')}, "
                        "with the same inputs, config and code.", "cached")
        return Html("")


def _one_sentence(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:300]}"


def _section(run: Run, anchor: str, title: str, build: Callable[[Run], Html]) -> Html:
    try:
        body = build(run)
    except Exception as e:  # noqa: BLE001 - one unreadable artifact must not cost the whole page
        body = note(f"This section could not be built: {_one_sentence(e)}", "failed")
    return tag("section", tag("h2", title), body, id=anchor)


# ---------------------------------------------------------------- sections


def run_section(run: Run) -> Html:
    m, parts = run.manifest, []
    if m.get("error"):
        parts.append(note(m["error"], "failed"))
    invocation = m.get("invocation") or {}
    command = invocation.get("command") or (
        "python -m pipeline.run " + shlex.join(invocation["argv"]) if "argv" in invocation else None)
    parts.append(facts([
        ("command", tag("code", command) if command else None),
        ("preset", invocation.get("preset")),
        ("config file", invocation.get("config_file")),
        ("overrides", Html("<br>".join(tag("code", o) for o in invocation.get("overrides", []))) or "none"),
        ("data", ", ".join(f"{k}={v}" for k, v in (run.config.get("data", {}).get("sources") or {}).items())
         or "the built-in synthetic set"),
        ("Beam options", tag("code", " ".join(m.get("beam_args") or [])) if m.get("beam_args") else "none"),
        ("output dir", tag("code", m.get("output_dir"))),
        ("started", m.get("started")), ("ended", m.get("ended")),
        ("duration", seconds(m.get("duration_s"))),
        ("cache", "off (--no-cache: every stage ran from an empty folder)" if m.get("no_cache") else "on"),
    ]))
    rows = []
    for name, r in run.stages.items():
        status = r.get("status", "pending")
        shown = {"cached": f"from run {r.get('produced_by_run')}", "skipped": r.get("skip_reason"),
                 "failed": r.get("error"), "pending": "not run"}.get(status, status)
        lineage = Html("<br>".join(f"{esc(k)} {short(v)}" for k, v in {**r.get("inputs", {}),
                                                                       **r.get("external_inputs", {})}.items()))
        rows.append(([tag("strong", name), tag("td", pill(status, status), " ", shown if shown != status else ""),
                      seconds(r.get("duration_s")), short(r.get("fingerprint")), lineage,
                      short(r.get("config_fingerprint")), short(r.get("code_fingerprint")),
                      tag("code", r.get("output_dir") or "")], {"data-stage": name, "data-status": status}))
    parts.append(tag("h3", "Stages"))
    parts.append(table(["stage", "status", "duration", "execution", "lineage: inputs consumed", "config", "code",
                        "outputs"], rows, class_="stages"))
    parts.append(tag("p", "Fingerprints (first 12 hex digits; hover for all 64): a stage is taken from the cache "
                          "when its execution fingerprint (inputs, config, code) matches an earlier success.",
                     class_="hint"))
    parts.append(tag("details", tag("summary", "The resolved config"),
                     tag("pre", json.dumps(run.config, indent=1, sort_keys=False, default=str))))
    return Html("".join(parts))


def data_section(run: Run) -> Html:
    if not run.has("ingest"):
        return note(run.why_missing("ingest"))
    stats = run.json("ingest", artifacts.STATISTICS_FILE)
    files = stats.get("files", {})
    parts = [run.provenance("ingest")]
    parts.append(tag("p", f"{number(files.get('found'))} image files found, {number(files.get('written'))} written, "
                          f"{number(files.get('rejected'))} rejected, {number(files.get('duplicates'))} exact "
                          f"duplicates dropped (written + rejected + duplicates = found: "
                          f"{'holds' if files.get('invariant_holds') else 'DOES NOT HOLD'}).", class_="lead"))
    reasons = sorted({r for s in stats.get("sources", {}).values() for r in s.get("rejected_by_reason", {})})
    rows = [[tag("strong", name), number(s.get("found")), number(s.get("over_limit")), number(s.get("written")),
             number(s.get("rejected")), *[number(s.get("rejected_by_reason", {}).get(r, 0)) for r in reasons],
             number(s.get("duplicates"))] for name, s in stats.get("sources", {}).items()]
    parts.append(tag("h3", "Per source"))
    parts.append(table(["source", "found", "over --limit", "written", "rejected",
                        *[f"rejected: {r}" for r in reasons], "duplicates"], rows, class_="numbers"))
    split_rows = [[tag("strong", name), number(s.get("count")),
                   ", ".join(f"{k} {number(v)}" for k, v in s.get("by_source", {}).items()),
                   number(s.get("mean_colorfulness"), "{:.1f}")] for name, s in stats.get("splits", {}).items()]
    parts.append(tag("h3", "Per split"))
    parts.append(table(["split", "images", "by source", "mean colourfulness"], split_rows, class_="numbers"))
    parts.append(_rejected_table(run))
    if run.has("validate"):
        anomalies = run.json("validate", artifacts.ANOMALIES_FILE)
        found = anomalies.get("anomalies", [])
        parts.append(tag("p", f"Validation read {number(sum(anomalies.get('records_read', {}).values()))} records back "
                              f"and checked {number(sum(anomalies.get('records_checked', {}).values()))} against "
                              f"the schema: {len(found)} anomalies.", class_="hint"))
    else:
        parts.append(note(run.why_missing("validate")))
    pictures = []
    if stats.get("l_histogram", {}).get("counts"):
        pictures.append(figure(l_histogram_chart(stats["l_histogram"]["counts"]),
                               "Lightness L of every stored pixel."))
    if run.exists("ingest", artifacts.AB_HISTOGRAM_FILE):
        mean_ab = stats.get("mean_ab") or []
        pictures.append(figure(
            image(mf.read_bytes(run.path("ingest", artifacts.AB_HISTOGRAM_FILE)), "histogram of the ab colours",
                  class_="pixelated"),
            "Colours (a, b) of every stored pixel: a to the right (green to red), b upwards (blue to yellow), "
            "faded by log count" + (f"; mean a {mean_ab[0]:.1f}, b {mean_ab[1]:.1f}." if len(mean_ab) == 2 else ".")))
    if run.has("statistics") and run.exists("statistics", artifacts.PRIOR_PICTURE_FILE):
        prior = run.stages["statistics"].get("metrics") or {}
        weights = (f" Weights {prior['weight_min']:.2f} to {prior['weight_max']:.2f} over {prior['bins']} bins."
                   if {"weight_min", "weight_max", "bins"} <= set(prior) else "")
        pictures.append(figure(
            image(mf.read_bytes(run.path("statistics", artifacts.PRIOR_PICTURE_FILE)), "the colour prior",
                  class_="pixelated"),
            "The training split's colour prior (left) and the class-rebalancing weights (right) on the ab plane."
            + weights))
    elif "statistics" in run.stages:
        pictures.append(note(run.why_missing("statistics")))
    parts.append(tag("h3", "Pictures"))
    parts.append(tag("div", Html("".join(pictures)), class_="gallery"))
    return Html("".join(parts))


def _rejected_table(run: Run) -> Html:
    rejected = _jsonl(run, artifacts.REJECTED_FILE)
    duplicates = _jsonl(run, artifacts.DUPLICATES_FILE)
    parts = [tag("h3", "Rejected files")]
    if not rejected:
        parts.append(tag("p", "No file was rejected.", class_="hint"))
    else:
        shown = rejected[:REJECTED_SHOWN]
        parts.append(table(["file", "source", "reason", "detail"],
                           [[tag("code", r.get("path")), r.get("source"), tag("strong", r.get("reason")),
                             r.get("detail")] for r in shown], class_="rejected"))
        if len(rejected) > len(shown):
            parts.append(tag("p", f"{len(shown)} of {len(rejected)} shown; all of them are in "
                                  f"{run.path('ingest', artifacts.REJECTED_FILE)}.", class_="hint"))
    if duplicates:
        parts.append(tag("p", f"{len(duplicates)} exact duplicates dropped, listed in "
                              f"{run.path('ingest', artifacts.DUPLICATES_FILE)}.", class_="hint"))
    return Html("".join(parts))


def _jsonl(run: Run, relative: str) -> list[dict]:
    if not run.exists("ingest", relative):
        return []
    return [json.loads(line) for line in mf.read_text(run.path("ingest", relative)).splitlines() if line.strip()]


def tuning_section(run: Run) -> Html:
    if not run.has("tune"):
        train = run.config.get("train", {})
        chosen = ", ".join(f"{k} {train[k]}" for k in ("model", "width", "head", "loss", "learning_rate", "batch_size")
                           if train.get(k) is not None)
        return note(Html(esc(run.why_missing("tune")) + esc(" The trainer used its config and the report's defaults"
                                                             + (f" ({chosen})." if chosen else "."))))
    from components.tuner.config import TUNER_PROJECT

    best = run.json("tune", artifacts.BEST_HPARAMS_FILE)
    trials = []
    for path in mf.glob(mf.join(run.dir("tune"), TUNER_PROJECT, "trial_*", "trial.json")):
        trials.append(json.loads(mf.read_text(path)))
    trials.sort(key=lambda t: (len(str(t.get("trial_id"))), str(t.get("trial_id"))))
    keys = list(best.get("hyperparameters", {}))
    for trial in trials:
        keys += [k for k in trial.get("hyperparameters", {}).get("values", {}) if k not in keys]
    objective = best.get("objective", "objective")
    parts = [run.provenance("tune"), tag("p", f"{best.get('algorithm', '')} search, {best.get('completed_trials')} "
                                               f"completed trials, objective {objective} ({best.get('direction')}"
                                               f"imised) at {best.get('image_size')}x{best.get('image_size')}.",
                                          class_="lead")]
    rows = []
    for trial in trials:
        values = trial.get("hyperparameters", {}).get("values", {})
        is_best = str(trial.get("trial_id")) == str(best.get("trial_id"))
        rows.append(([tag("strong", trial.get("trial_id")) if is_best else trial.get("trial_id"),
                      trial.get("status"), *[_hparam(values.get(k)) for k in keys],
                      number(trial.get("score"), "{:.5g}"), pill("best", "best") if is_best else ""],
                     {"class": "best" if is_best else None, "data-trial": trial.get("trial_id")}))
    if rows:
        parts.append(table(["trial", "status", *keys, objective, ""], rows, class_="trials"))
    else:
        parts.append(note("The tuner's trial records are gone; only the best trial is known.", "missing"))
    parts.append(tag("p", f"The trainer took trial {best.get('trial_id')}'s hyperparameters: "
                          + ", ".join(f"{k} {_hparam(v)}" for k, v in best.get("hyperparameters", {}).items()) + ".",
                     class_="hint"))
    return Html("".join(parts))


def _hparam(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "—" if value is None else str(value)


def training_section(run: Run) -> Html:
    if not run.has("train"):
        return note(run.why_missing("train"))
    s = run.json("train", artifacts.TRAIN_SUMMARY_FILE)
    from components.trainer.config import CSV_LOG

    log_path = (s.get("paths") or {}).get("training_log") or run.path("train", CSV_LOG)
    rows = list(csv.DictReader(io.StringIO(mf.read_text(log_path)))) if mf.exists(log_path) else []
    requested, ran = s.get("epochs_requested"), s.get("epochs_run")
    if s.get("stopped_by_time_budget"):
        stop = f"stopped by the time budget of {s.get('max_minutes')} minutes after epoch {ran}"
    elif requested is not None and ran is not None and ran < requested:
        stop = f"early stopping after epoch {ran} of {requested} (val_loss had not improved since epoch " \
               f"{s.get('best_epoch')})"
    else:
        stop = "no: every epoch ran"
    precision = s.get("precision") or {}
    strategy = s.get("strategy") or {}
    hp = s.get("hparams") or {}
    parts = [run.provenance("train"), facts([
        ("model", f"{s.get('model')}, {s.get('head')} head, width {hp.get('width')}"
                  + (f", {hp.get('backbone')} backbone, {hp.get('fusion')} fusion" if s.get("model") == "model2" else "")
                  + f", {number(s.get('trainable_parameters'))} trainable parameters"),
        ("hyperparameters", ", ".join(f"{k} {_hparam(v)}" for k, v in hp.items())),
        ("crops", f"{s.get('image_size')}x{s.get('image_size')}"),
        ("epochs", f"{ran} run of {requested}; best val_loss {number(s.get('best_val_loss'), '{:.5g}')} at epoch "
                   f"{s.get('best_epoch')}; model.keras is epoch {s.get('kept_epoch')} (--keep {s.get('keep')})"),
        ("early stop", stop),
        ("resumed", f"yes, from epoch {s['resumed_from_epoch']} (a killed run continued)"
         if s.get("resumed_from_epoch") else "no"),
        ("precision", f"{precision.get('policy')} ({precision.get('reason')})"),
        ("strategy", f"{strategy.get('name')}, {strategy.get('replicas')} replica(s), global batch "
                     f"{strategy.get('global_batch_size')}"),
        ("throughput", f"{number(s.get('examples_per_second'), '{:.1f}')} examples/s"),
        ("learning rate", f"decays to zero over the budget" if s.get("lr_decay") == "budget" else None),
    ])]
    if rows:
        parts.append(figure(training_chart(rows, s.get("best_epoch"), int(s.get("resumed_from_epoch") or 0)),
                            f"Loss and metrics per epoch from {log_path}."))
    else:
        parts.append(note(f"No training log at {log_path}."))
    return Html("".join(parts))


def verdict_section(run: Run) -> Html:
    if not run.has("evaluate"):
        return note(run.why_missing("evaluate"))
    metrics = run.json("evaluate", artifacts.METRICS_FILE)
    blessing = run.json("evaluate", artifacts.BLESSING_FILE)
    blessed = bool(blessing.get("blessed"))
    word = "BLESSED" if blessed else "NOT_BLESSED"
    parts = [run.provenance("evaluate"),
             tag("div", tag("div", word, class_="word"), tag("p", blessing.get("reason")),
                 class_=f"verdict {'blessed' if blessed else 'not-blessed'}", data_verdict=word)]
    columns = [("model", "this model"), ("gray", "gray baseline (a = b = 0)"),
               ("baseline", "last blessed model")]
    rows = []
    for key, label, fmt in METRICS:
        cells = [label]
        for column, _ in columns:
            value = (metrics.get(column) or {}).get(key)
            cells.append(tag("td", number(value, fmt), data_metric=f"{column}.{key}",
                             data_value=repr(value) if value is not None else None))
        rows.append(cells)
    baseline = metrics.get("baseline_model")
    parts.append(tag("p", f"{metrics.get('images')} {metrics.get('split')} images, centre crops of "
                          f"{metrics.get('image_size')}x{metrics.get('image_size')}. "
                          + (f"Last blessed model: {baseline}." if baseline else
                             "No model had been blessed before, so there is no last blessed model to compare with."),
                     class_="hint"))
    parts.append(table(["metric", *[label for _, label in columns]], rows, class_="numbers metrics"))
    checks = [([c.get("name"), tag("td", pill("passed" if c.get("passed") else "failed",
                                              "passed" if c.get("passed") else "failed")), c.get("detail")],
               {"data-check": c.get("name"), "data-passed": str(bool(c.get("passed"))).lower()})
              for c in blessing.get("checks", [])]
    parts.append(tag("h3", "Blessing checks"))
    parts.append(table(["check", "result", "numbers"], checks, class_="checks"))
    thresholds = blessing.get("thresholds") or {}
    if thresholds:
        parts.append(tag("p", "Thresholds (evaluate.thresholds.*): "
                              + ", ".join(f"{k} {v:g}" for k, v in thresholds.items()) + ".", class_="hint"))
    return Html("".join(parts))


def pictures_section(run: Run) -> Html:
    if not run.has("evaluate"):
        return note(run.why_missing("evaluate"))
    parts = []
    if run.exists("evaluate", artifacts.GRID_FILE):
        images = run.json("evaluate", artifacts.METRICS_FILE).get("images")
        shown = run.config.get("evaluate", {}).get("grid_images")
        parts.append(figure(image(mf.read_bytes(run.path("evaluate", artifacts.GRID_FILE)), "the test grid",
                                  class_="grid"),
                            "Test images, each row gray input | this model | truth"
                            + (f": {min(images, shown)} of the {images} test images." if images and shown else ".")))
    else:
        parts.append(note("The evaluator wrote no test grid."))
    photos = mf.glob(mf.join(run.dir("evaluate"), artifacts.HISTORICAL_DIR, "*.png"))
    historical_dir = run.config.get("evaluate", {}).get("historical_dir")
    parts.append(tag("h3", "Historical photos"))
    if photos:
        pairs = [_gray_beside(mf.read_bytes(p), posixpath.basename(p)) for p in photos[:HISTORICAL_SHOWN]]
        parts.append(tag("div", Html("".join(pairs)), class_="gallery historical"))
        if len(photos) > HISTORICAL_SHOWN:
            parts.append(tag("p", f"{HISTORICAL_SHOWN} of {len(photos)} shown; all are in "
                                  f"{mf.join(run.dir('evaluate'), artifacts.HISTORICAL_DIR)}.", class_="hint"))
    elif historical_dir:
        parts.append(note(f"No colorized photo from {historical_dir}."))
    else:
        parts.append(tag("p", "None given (evaluate.historical_dir, the evaluator's --historical_dir).",
                         class_="hint"))
    return Html("".join(parts))


def _gray_beside(data: bytes, name: str) -> Html:
    """The gray input (the colorized photo's own lightness) beside the colorized photo, both thumbnails."""
    from PIL import Image

    colour = Image.open(io.BytesIO(data)).convert("RGB")
    colour.thumbnail((HISTORICAL_SIDE, HISTORICAL_SIDE))
    encoded = []
    for picture in (colour.convert("L"), colour):
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=88)
        encoded.append(buffer.getvalue())
    return figure(tag("div", Html(image(encoded[0], f"{name}, gray") + image(encoded[1], f"{name}, colorized")),
                      class_="pair"), f"{name}: gray input | colorized")


def serving_commands(serving_dir: str, model_name: str) -> list[str]:
    """The two commands that serve the published models and colorize a photo with them."""
    return [
        f"python -m serving.server --model_config_file {mf.join(serving_dir, artifacts.MODELS_CONFIG_FILE)} "
        f"--model_config_file_poll_wait_seconds 10 --enable_batching "
        f"--batching_parameters_file {mf.join(serving_dir, artifacts.BATCHING_FILE)} "
        f"--monitoring_config_file {mf.join(serving_dir, artifacts.MONITORING_FILE)}",
        f"python -m serving.client --server localhost:8500 --model_name {model_name} PHOTO.jpg --output_dir colorized",
    ]


def serving_section(run: Run) -> Html:
    push = run.config.get("push", {})
    serving_dir = push.get("serving_dir") or mf.join(run.manifest.get("output_dir") or run.config.get("output_dir"),
                                                     "serving")
    model_name = push.get("model_name") or "colorizer"
    parts = []
    if run.has("push") and run.exists("push", artifacts.PUSH_RECORD_FILE):
        record = run.json("push", artifacts.PUSH_RECORD_FILE)
        serving_dir, model_name = record.get("serving_dir") or serving_dir, record.get("model_name") or model_name
        parts.append(run.provenance("push"))
        validation = record.get("validation") or {}
        parts.append(facts([
            ("published", pill(f"version {record.get('version')}", "passed") if record.get("pushed")
             else pill("nothing new", "failed")),
            ("why", record.get("reason")),
            ("model", model_name),
            ("path", tag("code", record.get("version_dir")) if record.get("version_dir") else None),
            ("checked", f"{validation.get('reason')} ({number(validation.get('process_seconds'), '{:.1f}')} s in a "
                        "fresh process)" if validation else None),
        ]))
    else:
        parts.append(note(run.why_missing("push")))
    if mf.exists(mf.join(serving_dir, artifacts.MODELS_CONFIG_FILE)):
        commands = serving_commands(serving_dir, model_name)
        parts.append(tag("p", f"Serve every published version of {model_name} (gRPC :8500, REST :8501), then "
                              "colorize a photo or a folder:"))
        parts.append(tag("pre", "\n".join(commands), class_="commands"))
    else:
        parts.append(tag("p", f"Nothing is published under {serving_dir} yet.", class_="hint"))
    return Html("".join(parts))


BUILDERS = {"run": run_section, "data": data_section, "tuning": tuning_section, "training": training_section,
            "verdict": verdict_section, "pictures": pictures_section, "serving": serving_section}


# ---------------------------------------------------------------- the page


def _headline(run: Run) -> Html:
    """The top of the page: the run's status, the verdict and the figures a person looks for first."""
    m = run.manifest
    status = m.get("status", "running")
    items = [pill(f"run {status}", status)]
    if run.has("evaluate"):
        try:
            blessing = run.json("evaluate", artifacts.BLESSING_FILE)
            metrics = run.json("evaluate", artifacts.METRICS_FILE)
            model, gray = metrics.get("model") or {}, metrics.get("gray") or {}
            items.append(pill("BLESSED" if blessing.get("blessed") else "NOT_BLESSED",
                              "passed" if blessing.get("blessed") else "failed"))
            items.append(tag("span", f"PSNR {number(model.get('psnr'), '{:.2f}')} dB (gray "
                                     f"{number(gray.get('psnr'), '{:.2f}')}), colourfulness "
                                     f"{number(model.get('colorfulness_ratio'), '{:.0%}')} of the truth's",
                             class_="figures"))
        except Exception:  # noqa: BLE001 - the Verdict section says what is wrong
            pass
    if m.get("error"):
        items.append(tag("span", m["error"], class_="error"))
    nav = tag("nav", Html(" ".join(tag("a", title, href=f"#{anchor}") for anchor, title in SECTIONS)))
    return tag("header", tag("h1", "Colorization run ", tag("code", m.get("run_id"))),
               tag("div", Html(" ".join(items)), class_="headline"), nav)


def build(manifest: dict[str, Any]) -> str:
    """The report page for a run's manifest (as manifest.json holds it)."""
    run = Run(manifest)
    body = _headline(run) + "".join(_section(run, anchor, title, BUILDERS[anchor]) for anchor, title in SECTIONS)
    footer = tag("footer", f"Built {mf.utc_now()} by python -m pipeline.report from the run's manifest and the "
                           "stages' artifacts.")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc('Colorization run ' + str(manifest.get('run_id')))}</title><style>{CSS}</style></head>"
            f"<body><main>{body}{footer}</main></body></html>\n")


def resolve_run_dir(path: str) -> str:
    """A run dir from a run dir, runs/latest (a link or a one-line file) or an output dir (its latest run)."""
    path = path.rstrip("/") or path
    runs = posixpath.dirname(path)
    if posixpath.basename(path) == mf.LATEST and posixpath.basename(runs) == mf.RUNS_DIR:
        run_id = mf.latest_run_id(posixpath.dirname(runs))
        if run_id:
            return mf.run_dir(posixpath.dirname(runs), run_id)
    if mf.exists(mf.join(path, mf.MANIFEST_FILE)):
        return path
    if mf.exists(mf.join(path, mf.RUNS_DIR)):
        run_id = mf.latest_run_id(path)
        if run_id:
            return mf.run_dir(path, run_id)
    raise ReportError(f"{path} is not a run dir (no {mf.MANIFEST_FILE}) nor an output dir with runs; pass "
                      f"OUT/runs/<run_id>, OUT/runs/latest or OUT.")


def write_report(run_dir: str, output: Optional[str] = None) -> str:
    """Build the report of the run in `run_dir` and write it (default run_dir/report.html); returns the path."""
    run_dir = resolve_run_dir(run_dir)
    manifest = json.loads(mf.read_text(mf.join(run_dir, mf.MANIFEST_FILE)))
    output = output or mf.join(run_dir, mf.REPORT_FILE)
    mf.write_text_atomic(output, build(manifest))
    return output


def write_quietly(run_dir: str, output: Optional[str] = None,
                  log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
                  ) -> Optional[str]:
    """write_report that never raises: a report that cannot be written costs one line, never the run."""
    try:
        return write_report(run_dir, output)
    except Exception as e:  # noqa: BLE001 - the report must never fail the run
        log(f"report: the run report could not be written ({_one_sentence(e)}); the run itself is not affected.")
        return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="OUT/runs/<run_id>, OUT/runs/latest, or OUT for its latest run")
    parser.add_argument("--output", help="where to write the page (default RUN_DIR/report.html)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        path = write_report(args.run_dir, args.output)
    except (ReportError, OSError, ValueError) as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(f"report: wrote {path} in {time.perf_counter() - started:.2f} s")
    return 0


CSS = """
:root { --ink: #1d2430; --muted: #5f6b7a; --line: #dde2e8; --bg: #f5f7fa; --card: #fff;
        --good: #1e7d3a; --good-bg: #e5f4ea; --bad: #b3261e; --bad-bg: #fbe9e7; --warn: #8a5a00; --warn-bg: #fff4de; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 20px 48px; }
header { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px; }
h1 { font-size: 22px; margin: 0 0 10px; } h1 code { font-size: 18px; color: var(--muted); }
h2 { font-size: 20px; margin: 0 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 8px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 18px 22px;
          margin-top: 18px; overflow-x: auto; }
nav { margin-top: 12px; display: flex; gap: 14px; flex-wrap: wrap; }
nav a { color: #2f6fb5; text-decoration: none; font-weight: 600; } nav a:hover { text-decoration: underline; }
.headline { display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }
.headline .figures { color: var(--muted); } .headline .error { color: var(--bad); font-weight: 600; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
pre { background: #f0f3f6; border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; overflow-x: auto;
      white-space: pre-wrap; overflow-wrap: anywhere; }
pre.commands { line-height: 1.7; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 14px; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #eef1f5; font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
table.numbers td:not(:first-child), table.trials td { font-variant-numeric: tabular-nums; }
table.numbers td:not(:first-child) { text-align: right; }
table.stages td { font-size: 13px; } table.stages td:last-child code { word-break: break-all; }
table.rejected code { word-break: break-all; }
tr.best { background: var(--good-bg) !important; font-weight: 600; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 0 0 8px; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; word-break: break-word; }
.pill { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 700;
        letter-spacing: .02em; text-transform: uppercase; background: #e9edf2; color: var(--muted); white-space: nowrap; }
.pill.succeeded, .pill.passed, .pill.best { background: var(--good-bg); color: var(--good); }
.pill.failed { background: var(--bad-bg); color: var(--bad); }
.pill.cached, .pill.skipped { background: #e8f0fb; color: #2f5f9e; }
.pill.running, .pill.pending { background: var(--warn-bg); color: var(--warn); }
.note { padding: 8px 12px; border-radius: 6px; margin: 6px 0 10px; }
.note.missing { background: var(--warn-bg); color: var(--warn); }
.note.failed { background: var(--bad-bg); color: var(--bad); font-weight: 600; }
.note.cached { background: #e8f0fb; color: #2f5f9e; }
.lead { font-size: 16px; } .hint { color: var(--muted); font-size: 13px; }
.verdict { border-radius: 10px; padding: 14px 20px; margin-bottom: 14px; }
.verdict .word { font-size: 44px; font-weight: 800; letter-spacing: .04em; line-height: 1.1; }
.verdict p { margin: 6px 0 0; font-size: 15px; }
.verdict.blessed { background: var(--good-bg); color: var(--good); border: 2px solid var(--good); }
.verdict.not-blessed { background: var(--bad-bg); color: var(--bad); border: 2px solid var(--bad); }
.gallery { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
figure { margin: 0; } figcaption { color: var(--muted); font-size: 13px; max-width: 520px; margin-top: 4px; }
img { max-width: 100%; height: auto; display: block; }
img.pixelated { image-rendering: pixelated; width: 300px; border: 1px solid var(--line); }
img.chart { border: 1px solid var(--line); border-radius: 6px; }
img.grid { border: 1px solid var(--line); }
.pair { display: flex; gap: 4px; } .pair img { max-width: 180px; }
details summary { cursor: pointer; color: #2f6fb5; font-weight: 600; margin-top: 8px; }
footer { color: var(--muted); font-size: 12px; margin-top: 18px; text-align: center; }
"""


if __name__ == "__main__":
    sys.exit(main())
