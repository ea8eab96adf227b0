"""TF Serving's gRPC PredictionService (Predict, GetModelMetadata) and ModelService over the core."""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import grpc
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from serving import _core, _metrics, _protos

_log = logging.getLogger("serving.grpc")

SIGNATURE_DEF_FIELD = "signature_def"


def _spec(spec: Any) -> tuple[str, int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


def _abort(context: grpc.ServicerContext, error: Exception, what: str) -> None:
    if isinstance(error, _core.ServingError):
        context.abort(grpc.StatusCode[error.code], error.message)
    _log.exception("gRPC %s failed", what)
    context.abort(grpc.StatusCode.INTERNAL, f"Internal error: {error}")


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata; Classify, Regress and MultiInference answer UNIMPLEMENTED."""

    def __init__(self, core: _core.ServingCore, metrics: _metrics.Metrics):
        self.core, self.metrics = core, metrics

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext):  # noqa: N802
        started, code, servable = time.monotonic(), "OK", None
        name, version, label = _spec(request.model_spec)
        signature_name = request.model_spec.signature_name or _core.DEFAULT_SIGNATURE
        max_bytes = self.core.limits.max_request_bytes

        def decode() -> tuple[str, dict]:
            return signature_name, {key: _core.tensor_to_array(key, proto, max_bytes)
                                    for key, proto in request.inputs.items()}

        try:
            servable = self.core.manager.resolve(name, version, label)
            pixels = _core.announced_pixels(itertools.chain.from_iterable(
                proto.string_val for proto in request.inputs.values() if proto.dtype == types_pb2.DT_STRING),
                self.core.limits.max_request_pixels)
            signature, outputs = self.core.predict(servable, decode, request.output_filter,
                                                   timeout=context.time_remaining(),
                                                   cancelled=lambda: not context.is_active(), pixels=pixels)
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature.name
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response
        except Exception as e:  # noqa: BLE001 - every failure becomes a status for this request only
            code = e.code if isinstance(e, _core.ServingError) else "INTERNAL"
            _abort(context, e, "Predict")
        finally:
            self.metrics.observe_request(*_metrics.request_labels(servable, signature_name), "GRPC", code,
                                         time.monotonic() - started)

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,  # noqa: N802
                         context: grpc.ServicerContext):
        try:
            if not request.metadata_field:
                raise _core.ServingError("INVALID_ARGUMENT", "GetModelMetadataRequest must name at least one "
                                                             f"metadata_field; ask for '{SIGNATURE_DEF_FIELD}'.")
            for field in request.metadata_field:
                if field != SIGNATURE_DEF_FIELD:
                    raise _core.ServingError("INVALID_ARGUMENT", f"Metadata field '{field}' is not supported; ask "
                                                                 f"for '{SIGNATURE_DEF_FIELD}'.")
            servable = self.core.manager.resolve(*_spec(request.model_spec))
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata[SIGNATURE_DEF_FIELD].Pack(servable.signature_def_map())
            return response
        except Exception as e:  # noqa: BLE001
            _abort(context, e, "GetModelMetadata")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, and HandleReloadConfigRequest to swap the model list at run time: only when the server
    runs with --allow_reload_config (`reload_root` set), and only for base paths under that folder."""

    def __init__(self, core: _core.ServingCore, reload_root: str | None = None):
        self.core, self.reload_root = core, reload_root

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,  # noqa: N802
                       context: grpc.ServicerContext):
        try:
            return _core.status_response(self.core.manager.status(*_spec(request.model_spec)))
        except Exception as e:  # noqa: BLE001
            _abort(context, e, "GetModelStatus")

    def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest,  # noqa: N802
                                  context: grpc.ServicerContext):
        if self.reload_root is None:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "HandleReloadConfigRequest is off on this server; "
                                                             "start it with --allow_reload_config to use it.")
        response = model_management_pb2.ReloadConfigResponse()
        try:
            sources = _core.sources_from_config(request.config, "The ReloadConfigRequest")
            for source in sources:  # checked before any file is looked at: no probing outside the root
                _core.check_under_root(source, self.reload_root)
            for source in sources:
                _core.check_base_path(source.name, source.base_path)
            self.core.manager.set_sources(sources)
        except _protos.ConfigFileError as e:
            response.status.error_code = _core.CODE_NUMBERS["INVALID_ARGUMENT"]
            response.status.error_message = str(e)
        return response


def add_services(server: grpc.Server, core: _core.ServingCore, metrics: _metrics.Metrics,
                 reload_root: str | None = None) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core, metrics), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core, reload_root), server)
