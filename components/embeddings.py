"""embeddings: precompute Model 2's frozen-backbone vector once per image with Beam's RunInference.

Model 2's classifier is frozen, so its 1000 class probabilities for an image
never change during training. This job reads example_gen's records, runs the
backbone once per image and writes each record back unchanged plus the
`image/embedding` feature; the trainer then trains Model 2's head on the
stored vectors (`--embeddings`) while the exported model still runs end to
end. The output dir is a valid `--examples` dir: examples/<split>/ sharded
like example_gen's, its statistics and schema copied, and embeddings.json
saying which backbone, weights and crop made the vectors.

The vector is the backbone's output for the stored image's centre crop at
--image_size (the loader's eval crop), and training uses it for every random
crop and flip of that image: a global class vector barely changes under a
224-of-250 crop or a mirror image.

Local, after example_gen (ImageNet weights from the Keras cache):

    python -m components.embeddings --examples /tmp/ingest --output_dir /tmp/embedded \\
        --backbone inception_resnet_v2 --image_size 224 --runner=DirectRunner \\
        --direct_num_workers=2 --direct_running_mode=multi_processing
    python -m components.trainer --examples /tmp/embedded --output_dir /tmp/train2 --model model2 --embeddings

Dataflow (workers have no Keras cache: give the weights file on GCS; add
--worker_machine_type/--dataflow_service_options for GPUs as needed):

    python -m components.embeddings --examples gs://BUCKET/ingest --output_dir gs://BUCKET/embedded \\
        --backbone_weights gs://BUCKET/weights/inception_resnet_v2_weights_tf_dim_ordering_tf_kernels.h5 \\
        --runner=DataflowRunner --project PROJECT --region REGION \\
        --temp_location gs://BUCKET/tmp --setup_file ./setup.py

Without the weights, --allow_random_backbone (or --backbone_weights none)
uses a randomly initialised backbone seeded with RANDOM_BACKBONE_SEED, so
every worker computes the same vectors; they are not the report's.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import sys
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from components import settings
from components.hparams import BACKBONES
from components.settings import artifact, setting
from components.tfrecord_sink import CorruptRecordError, read_tfrecord_file
from schemas.artifacts import AB_HISTOGRAM_FILE, EXAMPLES_DIR, SCHEMA_FILE, STATISTICS_FILE

EMBEDDINGS_FILE = "embeddings.json"
RANDOM_BACKBONE_SEED = 20240611
"""keras.utils.set_random_seed value before building a random backbone: the same weights on every worker."""
RANDOM_BACKBONE_WARNING = (
    "computing embeddings with a RANDOMLY INITIALISED backbone: these vectors carry no ImageNet meaning and "
    "are not the report's Model 2"
)
_HEAD_WIDTH = 0.125  # build_model2_parts also builds a head, which this job throws away
_FILE_GLOB = "*.tfrecord*"
_NAMESPACE = "embeddings"

_log = logging.getLogger(__name__)


class EmbeddingsError(Exception):
    """A mistake the user can fix; the message is one sentence saying how."""


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """Which frozen classifier makes the vectors; plain values so it pickles to any runner.

    weights: what models.resolve_backbone_weights takes ("imagenet", a .h5
    path, local or remote such as gs://), resolved again on each worker, or
    None (random, seeded with RANDOM_BACKBONE_SEED).
    """

    backbone: str
    weights: str | None
    image_size: int


# ---------------------------------------------------------------- pure functions


def centre_crop_l(record: bytes, image_size: int) -> np.ndarray:
    """Serialized record -> L (0..100) of its centre image_size crop, float32 [S, S, 1]; the loader's eval crop."""
    from tensorflow.core.example import example_pb2

    import schemas

    feature = example_pb2.Example.FromString(record).features.feature
    lab = schemas.decode_lab(
        feature[schemas.IMAGE_KEY].bytes_list.value[0],
        feature[schemas.HEIGHT_KEY].int64_list.value[0],
        feature[schemas.WIDTH_KEY].int64_list.value[0],
    ).numpy()
    height, width, _ = lab.shape
    if min(height, width) < image_size:
        raise ValueError(f"a record's image is {height}x{width}, smaller than --image_size {image_size}.")
    top, left = (height - image_size) // 2, (width - image_size) // 2
    return np.ascontiguousarray(lab[top : top + image_size, left : left + image_size, :1], dtype=np.float32)


def add_embedding(record: bytes, embedding: Sequence[float]) -> bytes:
    """The record with its EMBEDDING_KEY float feature set (replaced if present); every other feature unchanged."""
    from tensorflow.core.example import example_pb2

    from schemas import EMBEDDING_KEY, EMBEDDING_SIZE

    values = np.asarray(embedding, np.float32).ravel()
    if values.size != EMBEDDING_SIZE:
        raise ValueError(f"the backbone returned {values.size} values per image, the schema holds {EMBEDDING_SIZE}.")
    example = example_pb2.Example.FromString(record)
    example.features.feature[EMBEDDING_KEY].float_list.value[:] = np.clip(values, 0.0, 1.0).tolist()
    return example.SerializeToString()


def split_of(filename: str, examples_dir: str) -> str:
    """'<examples_dir>/train/data-00000-of-00004.tfrecord' -> 'train'."""
    prefix = examples_dir.rstrip("/") + "/"
    relative = filename[len(prefix):] if filename.startswith(prefix) else filename
    return relative.split("/", 1)[0]


# ---------------------------------------------------------------- the backbone


def load_backbone(spec: BackboneSpec):
    """Model 2's backbone (L [B, S, S, 1] -> [B, 1000]) through models.build_model2_parts.

    A random backbone (weights None) is built right after
    keras.utils.set_random_seed(RANDOM_BACKBONE_SEED), which reseeds this
    process's Python, NumPy and TensorFlow generators.
    """
    import keras

    from components import models

    if spec.weights is None:
        keras.utils.set_random_seed(RANDOM_BACKBONE_SEED)
    return models.build_model2_parts(spec.image_size, _HEAD_WIDTH, spec.backbone, spec.weights).backbone


def fingerprint(model) -> str:
    """SHA-256 over the model's weights: equal on two workers exactly when their backbones are."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


class BackboneModelHandler(ModelHandler[np.ndarray, PredictionResult, Any]):
    """RunInference handler: loads the backbone with this project's weights rule and runs it on stacked L crops.

    Beam's TFModelHandlerTensor would need tensorflow_hub (not a dependency)
    and a saved copy of the model; this one builds the backbone in place and
    checks on each worker that its weights match the driver's fingerprint.
    """

    def __init__(self, spec: BackboneSpec, batch_size: int, expected_fingerprint: str | None = None):
        self._spec = spec
        self._batch_size = batch_size
        self._expected = expected_fingerprint

    def load_model(self):
        model = load_backbone(self._spec)
        if self._expected is not None and fingerprint(model) != self._expected:
            raise RuntimeError(
                f"the {self._spec.backbone} backbone built on this worker differs from the driver's "
                f"(weights {self._spec.weights}); give every worker the same --backbone_weights file."
            )
        return model

    def run_inference(
        self, batch: Sequence[np.ndarray], model, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        vectors = np.asarray(model(np.stack(batch), training=False))
        return [PredictionResult(example, vector) for example, vector in zip(batch, vectors)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(example.nbytes for example in batch)

    def batch_elements_kwargs(self) -> dict[str, int]:
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def get_metrics_namespace(self) -> str:
        return _NAMESPACE


# ---------------------------------------------------------------- the pipeline


def _key_by_split(item: tuple[str, bytes], examples_dir: str) -> tuple[str, bytes]:
    filename, record = item
    return split_of(filename, examples_dir), record


def _keyed_l(item: tuple[str, bytes], image_size: int) -> tuple[tuple[str, bytes], np.ndarray]:
    split, record = item
    return (split, record), centre_crop_l(record, image_size)


def _attach(keyed: tuple[tuple[str, bytes], PredictionResult]) -> tuple[str, bytes]:
    (split, record), result = keyed
    Metrics.counter(_NAMESPACE, f"embedded_{split}").inc()
    return split, add_embedding(record, result.inference)


class AddEmbeddings(beam.PTransform):
    """(split, serialized record) -> (split, the record plus its backbone embedding)."""

    def __init__(self, handler: BackboneModelHandler, image_size: int):
        super().__init__()
        self._handler = handler
        self._image_size = image_size

    def expand(self, records):
        return (
            records
            | "CentreCropL" >> beam.Map(_keyed_l, self._image_size)
            | "RunBackbone" >> RunInference(KeyedModelHandler(self._handler))
            | "AttachEmbedding" >> beam.Map(_attach)
        )


class EmbedExamples(beam.PTransform):
    """Every split's records under examples_dir -> the same records with embeddings, written under output_dir."""

    def __init__(self, examples_dir: str, output_dir: str, splits: Sequence[str], handler: BackboneModelHandler,
                 image_size: int, gzip: bool):
        super().__init__()
        self._examples_dir = examples_dir
        self._output_dir = output_dir
        self._splits = tuple(splits)
        self._handler = handler
        self._image_size = image_size
        self._gzip = gzip

    def expand(self, pbegin):
        from components.tfrecord_sink import ReadTFRecords, WriteToTFRecord

        patterns = [FileSystems.join(self._examples_dir, split, _FILE_GLOB) for split in self._splits]
        embedded = (
            pbegin
            | "Patterns" >> beam.Create(patterns)
            | "ReadRecords" >> ReadTFRecords()
            | "KeyBySplit" >> beam.Map(_key_by_split, self._examples_dir)
            | "AddEmbeddings" >> AddEmbeddings(self._handler, self._image_size)
        )
        for split in self._splits:
            prefix = FileSystems.join(self._output_dir, EXAMPLES_DIR, split, "data")
            (
                embedded
                | f"Select_{split}" >> beam.FlatMap(lambda x, s=split: [x[1]] if x[0] == s else [])
                | f"Write_{split}" >> WriteToTFRecord(prefix, gzip=self._gzip)
            )
        return embedded


# ---------------------------------------------------------------- driver


@dataclasses.dataclass(frozen=True)
class EmbeddingsConfig:
    """The job's arguments (its flags, derived by components.settings), checked by run_embeddings."""

    examples: str = artifact("input", "example_gen's --output_dir (reads its examples/<split>/)")
    output_dir: str = artifact(
        "output", "where the embedded examples/, a copy of statistics/ and schema/, and embeddings.json go"
    )
    backbone: str = setting("inception_resnet_v2", "Model 2's classifier (the report's is inception_resnet_v2); "
                            "the trainer's must match", choices=BACKBONES)
    backbone_weights: str = setting(
        "imagenet", "imagenet (the Keras cache, downloaded through Keras when missing) | a .h5 path (local or "
        "gs://) | none (random, seeded)"
    )
    allow_random_backbone: bool = setting(False, "if the weights are missing, use a random seeded backbone "
                                          "instead of failing")
    image_size: int = setting(224, "side of the centre crop the backbone sees: the trainer's --image_size")
    batch_size: int = setting(32, "images per backbone call")
    overwrite: bool = setting(False, "replace examples already in --output_dir")


def _split_files(examples_dir: str) -> dict[str, list[str]]:
    """{split: sorted record files} of an examples/ dir."""
    if not FileSystems.exists(examples_dir):
        return {}
    matched = FileSystems.match([FileSystems.join(examples_dir, "*", _FILE_GLOB)])[0].metadata_list
    files: dict[str, list[str]] = {}
    for m in matched:
        files.setdefault(split_of(m.path, examples_dir), []).append(m.path)
    return {split: sorted(paths) for split, paths in sorted(files.items())}


def count_records(files: Sequence[str]) -> int:
    """Records in TFRecord files (GZIP for .gz), each checked against its CRCs; a damaged file is one sentence
    (EmbeddingsError) naming it."""
    try:
        return sum(1 for path in files for _ in read_tfrecord_file(path))
    except CorruptRecordError as e:
        raise EmbeddingsError(str(e)) from None


def check_schema_version(files: dict[str, list[str]]) -> None:
    """Refuse records of another schema version (one sentence, from schemas) by each split's first record."""
    import schemas

    for paths in files.values():
        path = paths[0]
        try:
            first = next(iter(read_tfrecord_file(path)), None)
        except CorruptRecordError as e:
            raise EmbeddingsError(str(e)) from None
        if first is not None:
            version = schemas.record_schema_version(first[1])
            if version is not None and version != schemas.SCHEMA_VERSION:
                raise EmbeddingsError(schemas.old_records_error(os.path.dirname(path), version))


def _same_dir(a: str, b: str) -> bool:
    if "://" not in a and "://" not in b:
        return os.path.realpath(a) == os.path.realpath(b)
    return a.rstrip("/") == b.rstrip("/")


def _check_paths(config: EmbeddingsConfig) -> dict[str, list[str]]:
    """The input's record files per split; refuses a missing input and an output that would clobber something."""
    examples_dir = FileSystems.join(config.examples, EXAMPLES_DIR)
    files = _split_files(examples_dir)
    if not files:
        raise EmbeddingsError(
            f"{examples_dir} holds no TFRecord files; pass --examples the --output_dir of example_gen."
        )
    if _same_dir(config.examples, config.output_dir):
        raise EmbeddingsError("--output_dir is the --examples dir; write the embedded records to a new folder.")
    out_examples = FileSystems.join(config.output_dir, EXAMPLES_DIR)
    existing = []
    if FileSystems.exists(out_examples):
        existing = FileSystems.match([FileSystems.join(out_examples, "**")])[0].metadata_list
    if existing:
        if not config.overwrite:
            raise EmbeddingsError(
                f"{out_examples} already holds {len(existing)} files; choose a new --output_dir or pass --overwrite."
            )
        FileSystems.delete([out_examples])
    return files


def _stored_size(examples: str) -> int | None:
    path = FileSystems.join(examples, STATISTICS_FILE)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8")).get("stored_size")


def resolve_backbone(config: EmbeddingsConfig) -> tuple[BackboneSpec, str]:
    """(spec, fingerprint) of the backbone this run uses, by models.resolve_backbone_weights; MissingWeightsError
    unless a random one is allowed."""
    from components import models

    if config.backbone not in models.BACKBONES:
        raise EmbeddingsError(f"unknown --backbone {config.backbone!r}; choose one of {', '.join(models.BACKBONES)}.")
    try:
        path = models.resolve_backbone_weights(
            config.backbone, config.backbone_weights, allow_random_backbone=config.allow_random_backbone
        )
        spec = BackboneSpec(config.backbone, None if path is None else config.backbone_weights.strip(),
                            config.image_size)
        model = load_backbone(spec)
    except (ValueError, FileNotFoundError) as e:
        raise EmbeddingsError(str(e)) from None
    if spec.weights is None:
        _log.warning("WARNING: %s.", RANDOM_BACKBONE_WARNING)
    return spec, fingerprint(model)


def _copy(src: str, dst: str) -> None:
    with FileSystems.open(src) as f:
        data = f.read()
    with FileSystems.create(dst) as f:
        f.write(data)


def run_embeddings(config: EmbeddingsConfig, beam_args: list[str]) -> dict:
    """Run the job, check the counts, copy statistics and schema, write and return embeddings.json's content."""
    if config.batch_size < 1:
        raise EmbeddingsError(f"--batch_size must be at least 1, got {config.batch_size}.")
    if config.image_size < 8 or config.image_size % 8:
        raise EmbeddingsError(
            f"--image_size must be a positive multiple of 8 (the trainer's --image_size), got {config.image_size}."
        )
    files = _check_paths(config)
    check_schema_version(files)
    stored = _stored_size(config.examples)
    if stored is not None and stored < config.image_size:
        raise EmbeddingsError(
            f"records under {config.examples} are stored at {stored}x{stored}, smaller than --image_size "
            f"{config.image_size}; use the trainer's --image_size (at most {stored})."
        )
    spec, digest = resolve_backbone(config)
    expected = {split: count_records(paths) for split, paths in files.items()}
    gzip = all(p.endswith(".gz") for paths in files.values() for p in paths)

    handler = BackboneModelHandler(spec, config.batch_size, digest)
    pipeline = beam.Pipeline(options=PipelineOptions(beam_args, save_main_session=False))
    _ = pipeline | "EmbedExamples" >> EmbedExamples(
        FileSystems.join(config.examples, EXAMPLES_DIR), config.output_dir, list(files), handler, spec.image_size, gzip
    )
    pipeline.run().wait_until_finish()

    out_files = _split_files(FileSystems.join(config.output_dir, EXAMPLES_DIR))
    written = {split: count_records(out_files.get(split, [])) for split in expected}
    wrong = [f"{split} {written[split]} of {n}" for split, n in expected.items() if written[split] != n]
    if wrong:
        raise EmbeddingsError(
            f"the embedded records do not match the input's counts ({', '.join(wrong)}); "
            f"re-run with --overwrite and check the job's log."
        )
    for name in (STATISTICS_FILE, AB_HISTOGRAM_FILE, SCHEMA_FILE):
        if FileSystems.exists(FileSystems.join(config.examples, name)):
            _copy(FileSystems.join(config.examples, name), FileSystems.join(config.output_dir, name))
    from schemas import EMBEDDING_KEY, EMBEDDING_SIZE

    summary = {
        "source_examples": config.examples,
        "backbone": spec.backbone,
        "weights": spec.weights,
        "random_backbone": spec.weights is None,
        "random_backbone_seed": RANDOM_BACKBONE_SEED if spec.weights is None else None,
        "backbone_sha256": digest,
        "image_size": spec.image_size,
        "stored_size": stored,
        "crop": "centre",
        "embedding_key": EMBEDDING_KEY,
        "embedding_size": EMBEDDING_SIZE,
        "splits": written,
    }
    if spec.weights is None:
        summary["warning"] = RANDOM_BACKBONE_WARNING
    with FileSystems.create(FileSystems.join(config.output_dir, EMBEDDINGS_FILE)) as f:
        f.write(json.dumps(summary, indent=1).encode("utf-8"))
    return summary


def format_summary(summary: dict, output_dir: str) -> str:
    splits = ", ".join(f"{split} {n}" for split, n in summary["splits"].items())
    weights = summary["weights"] or f"RANDOM (seed {summary['random_backbone_seed']})"
    return "\n".join(
        [
            f"Embedded {sum(summary['splits'].values())} records ({splits}) with {summary['backbone']} "
            f"(weights {weights}) on the centre {summary['image_size']}x{summary['image_size']} crop.",
            f"Examples: {FileSystems.join(output_dir, EXAMPLES_DIR)}/{{{','.join(summary['splits'])}}}/  "
            f"Summary: {FileSystems.join(output_dir, EMBEDDINGS_FILE)}",
            f"Next: python -m components.trainer --examples {output_dir} --model model2 --embeddings "
            f"--image_size {summary['image_size']} (with {summary['backbone']} as its backbone)",
        ]
    )


def _build_parser() -> argparse.ArgumentParser:
    return settings.parser(
        EmbeddingsConfig, prog="python -m components.embeddings",
        description="Add Model 2's frozen-backbone embedding to every record example_gen wrote, with Beam's "
        "RunInference. Unknown flags (--runner, --direct_num_workers, --project, ...) go to Beam.",
    )


def run(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 with one sentence for a mistake the user can fix)."""
    from components.models import MissingWeightsError

    args, beam_args = _build_parser().parse_known_args(argv)
    config = settings.from_args(
        EmbeddingsConfig, args, examples=args.examples.rstrip("/"), output_dir=args.output_dir.rstrip("/")
    )
    try:
        summary = run_embeddings(config, beam_args)
    except (MissingWeightsError, EmbeddingsError) as e:
        print(f"embeddings: {e}", file=sys.stderr)
        return 2
    print(format_summary(summary, config.output_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.getLogger().setLevel(logging.WARNING)
    return run(argv)


if __name__ == "__main__":
    # Run through the importable module, so Beam pickles the handler and DoFns by reference to it
    # rather than by value from __main__ (which multi-process and remote workers cannot use).
    from components.embeddings import main as _main

    sys.exit(_main())
