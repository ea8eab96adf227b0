"""TF Serving's config messages that tensorflow-serving-api does not ship, and text-proto file reading.

BatchingParameters (session_bundle_config.proto) and MonitoringConfig (monitoring_config.proto) are
declared here with TF Serving's field names and numbers, so the files the pusher writes for
`tensorflow_model_server` parse with the same rules (unknown fields and bad values are errors).
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory, text_format, wrappers_pb2

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's PrometheusExporter::kPrometheusPath

_F = descriptor_pb2.FieldDescriptorProto
_M = TypeVar("_M", bound=message.Message)


class ConfigFileError(ValueError):
    """A config file the user can fix; the message is one sentence naming the file."""


def _field(name: str, number: int, kind: int, type_name: str = "", repeated: bool = False) -> _F:
    field = _F(name=name, number=number, type=kind, label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name
    return field


def _build_classes() -> tuple[type[message.Message], type[message.Message]]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="serving/tf_serving_configs.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    int64 = (_F.TYPE_MESSAGE, ".google.protobuf.Int64Value")
    proto.message_type.add(name="BatchingParameters", field=[
        _field("max_batch_size", 1, *int64),
        _field("batch_timeout_micros", 2, *int64),
        _field("max_enqueued_batches", 3, *int64),
        _field("num_batch_threads", 4, *int64),
        _field("thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
        _field("allowed_batch_sizes", 6, _F.TYPE_INT64, repeated=True),
        _field("pad_variable_length_inputs", 7, _F.TYPE_BOOL),
    ])
    proto.message_type.add(name="PrometheusConfig", field=[
        _field("enable", 1, _F.TYPE_BOOL), _field("path", 2, _F.TYPE_STRING)])
    proto.message_type.add(name="MonitoringConfig", field=[
        _field("prometheus_config", 1, _F.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig")])
    pool.Add(proto)
    get = lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName(name))  # noqa: E731
    return get("tensorflow.serving.BatchingParameters"), get("tensorflow.serving.MonitoringConfig")


BatchingParameters, MonitoringConfig = _build_classes()


def read_text_proto(path: str, message_class: type[_M], what: str) -> _M:
    """Parses a text-format proto file; a missing or malformed file raises ConfigFileError."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        raise ConfigFileError(f"The {what} {path} does not exist; check the path.")
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    parsed = message_class()
    try:
        text_format.Parse(text, parsed)
    except text_format.ParseError as e:
        raise ConfigFileError(
            f"The {what} {path} is not a valid {message_class.DESCRIPTOR.name} text proto: {e}.") from None
    return parsed
