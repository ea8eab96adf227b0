"""Model server: TF Serving's gRPC and REST APIs for the pusher's SavedModels, with tensorflow_model_server's flags.

Where `tensorflow_model_server` is on PATH this execs it with the same flags (the production path).
Elsewhere it serves the same API itself from the same SavedModels: gRPC PredictionService
(Predict, GetModelMetadata) and ModelService (GetModelStatus, HandleReloadConfigRequest) on
--port, REST v1 on --rest_api_port, so one client works against both.

One model:

    python -m serving.server --port=8500 --rest_api_port=8501 \\
        --model_name=colorizer --model_base_path=out/serving/colorizer

What the pusher writes (version policy, labels, batching, Prometheus metrics):

    python -m serving.server --model_config_file=out/serving/models.config \\
        --model_config_file_poll_wait_seconds=10 \\
        --enable_batching --batching_parameters_file=out/serving/batching_parameters.txt \\
        --monitoring_config_file=out/serving/monitoring.config
    curl localhost:8501/v1/models/colorizer                      # version status
    curl localhost:8501/v1/models/colorizer/labels/stable/metadata
    curl localhost:8501/monitoring/prometheus/metrics

Stock TF Serving in Docker: serving/docker-compose.yml; on Kubernetes: serving/kubernetes.yaml.
`--implementation=python` forces the built-in server, `--implementation=binary` requires the binary.
Flags that only tensorflow_model_server knows are passed through to it. New integer-named version
folders are picked up every --file_system_poll_wait_seconds, a changed --model_config_file (the
pusher's labels) every --model_config_file_poll_wait_seconds; SIGTERM or SIGINT stops gracefully.
The built-in server alone has --grpc_bind_address/--rest_bind_address (default 0.0.0.0, every
address), --allow_reload_config (HandleReloadConfigRequest, off by default) with
--reload_config_allowed_root, the request limits (--max_inflight_requests and the other --max_*
flags), and --json_parse_process_bytes (default 256 KiB): REST bodies larger than this are parsed
in one or two worker processes (numpy and json only), so a large body's parse never holds the
server's GIL; smaller ones are parsed in the request's thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Sequence

BINARY = "tensorflow_model_server"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # largest gRPC response
IMPLEMENTATIONS = ("auto", "binary", "python")
PIXELS_PER_CPU = 2_000_000  # --max_inflight_pixels per CPU: one 2000x2000 image at a time on 2 cores

_log = logging.getLogger("serving.server")


@dataclasses.dataclass
class ServerConfig:
    """tensorflow_model_server's flags.

    rest_api_port: None turns REST off (the flag's 0); in this library 0 picks a free port, as
    port=0 does for gRPC. bind_address is where both listen unless grpc_bind_address or
    rest_bind_address says otherwise. reload_config_allowed_root None means the folder of
    model_config_file (or the parent of model_base_path).
    """

    port: int = 8500
    rest_api_port: int | None = 8501
    model_name: str = "colorizer"
    model_base_path: str | None = None
    model_config_file: str | None = None
    model_config_file_poll_wait_seconds: float = 0.0
    enable_batching: bool = False
    batching_parameters_file: str | None = None
    monitoring_config_file: str | None = None
    file_system_poll_wait_seconds: float = 1.0
    rest_api_timeout_in_ms: int = 30000
    grpc_max_threads: int = dataclasses.field(default_factory=lambda: 4 * (os.cpu_count() or 1))
    bind_address: str = "0.0.0.0"
    # built-in server only: listening addresses and the config-reload RPC
    grpc_bind_address: str | None = None
    rest_bind_address: str | None = None
    allow_reload_config: bool = False
    reload_config_allowed_root: str | None = None
    # Request limits of the built-in server (serving._core.RequestLimits; tensorflow_model_server has none of these)
    max_inflight_requests: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    max_queued_requests: int = dataclasses.field(default_factory=lambda: 16 * (os.cpu_count() or 1))
    max_request_bytes: int = 64 * 1024 * 1024
    max_request_pixels: int = 50_000_000
    max_json_depth: int = 64
    max_inflight_pixels: int = dataclasses.field(default_factory=lambda: PIXELS_PER_CPU * (os.cpu_count() or 1))
    json_parse_process_bytes: int = 256 * 1024  # REST bodies over this are parsed in worker processes; 0: none
    # TensorFlow's thread pools (tensorflow_model_server's flags; 0: automatic, see tensorflow_threads)
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0

    def request_limits(self) -> Any:
        """These flags as serving._core.RequestLimits; a value under 1 raises ServerConfigError."""
        from serving import _core

        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(_core.RequestLimits)}
        for name, value in values.items():
            if value < 1:
                raise ServerConfigError(f"--{name} must be at least 1, got {value}.")
        return _core.RequestLimits(**values)


INTER_OP_THREADS_PER_CPU = 2
"""The built-in server's automatic inter-op pool: two threads per CPU, not TensorFlow's one.

With one per CPU, a large image's long ops (its decode, its strips) held every inter-op thread and the
small requests' ops queued behind them: while one 49-megapixel PNG was colorized, a 250x250 request in
the same process waited up to 5.4-7.9 s (2 cores). With two per CPU the OS shares the cores between the
requests' threads: at most 0.7-0.8 s, and the large image took about a tenth longer."""


def tensorflow_threads(config: ServerConfig) -> tuple[int, int]:
    """(inter-op, intra-op) threads for TensorFlow: the flags, or 2 per CPU and TensorFlow's own (1 per CPU)."""
    cpus = os.cpu_count() or 1
    return (config.tensorflow_inter_op_parallelism or INTER_OP_THREADS_PER_CPU * cpus,
            config.tensorflow_intra_op_parallelism or cpus)


def _set_tensorflow_threads(config: ServerConfig) -> None:
    """Sizes TensorFlow's thread pools before the first model loads; in a process whose TensorFlow already
    runs (a test, a notebook) the pools are fixed, and one log line says so."""
    import tensorflow as tf

    inter, intra = tensorflow_threads(config)
    try:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    except RuntimeError:
        _log.info("TensorFlow already runs in this process: its thread pools stay as they are (inter-op %d, "
                  "intra-op %d).", tf.config.threading.get_inter_op_parallelism_threads(),
                  tf.config.threading.get_intra_op_parallelism_threads())
        return
    _log.info("TensorFlow threads: inter-op %d, intra-op %d.", inter, intra)


def json_parse_processes() -> int:
    """JSON parser processes for large REST bodies: one per 2 CPUs, one or two."""
    return max(1, min(2, (os.cpu_count() or 1) // 2))


class ServerConfigError(ValueError):
    """A configuration mistake; the message is one sentence naming it and the fix."""


class ModelServer:
    """The running built-in server: `grpc_port`, `rest_port` (None when off), `stop()`."""

    def __init__(self, config: ServerConfig, core: Any, grpc_server: Any, grpc_port: int, rest: Any,
                 stop_event: threading.Event, threads: list[threading.Thread]):
        self.config, self.core = config, core
        self._grpc, self._rest = grpc_server, rest
        self._stop_event, self._threads = stop_event, threads
        self.grpc_port = grpc_port
        self.rest_port: int | None = rest.server_address[1] if rest else None
        self.rest_api: Any = rest.api if rest else None
        self._stopped = False

    def stop(self, grace: float = 5.0) -> None:
        """Stops taking requests, lets in-flight ones finish (up to `grace` seconds), then unloads."""
        if self._stopped:
            return
        self._stopped = True
        self._stop_event.set()
        done = self._grpc.stop(grace)
        if self._rest:
            self._rest.stop()
        self.core.drain(grace)
        done.wait(grace)
        self.core.close()
        self.core.manager.stop()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _sources(config: ServerConfig) -> list:
    from serving import _core

    if config.model_config_file:
        sources = _core.read_model_config_file(config.model_config_file)
    elif config.model_base_path:
        sources = [_core.ModelSource(config.model_name, _core.absolute_path(config.model_base_path))]
    else:
        raise ServerConfigError("Pass --model_base_path (a folder of numbered SavedModel versions) or "
                                "--model_config_file (a ModelServerConfig text proto).")
    for source in sources:
        _core.check_base_path(source.name, source.base_path)
    return sources


def _prometheus_path(config: ServerConfig) -> str | None:
    from serving import _protos

    if not config.monitoring_config_file:
        return None
    monitoring = _protos.read_text_proto(config.monitoring_config_file, _protos.MonitoringConfig,
                                         "monitoring config file")
    if not monitoring.prometheus_config.enable:
        return None
    if config.rest_api_port is None:
        _log.warning("Prometheus metrics are enabled but the REST port is off, so nothing serves them")
    return monitoring.prometheus_config.path or _protos.DEFAULT_PROMETHEUS_PATH


def _reload_root(config: ServerConfig) -> str | None:
    """The folder that HandleReloadConfigRequest's base paths must lie under; None when the RPC is off."""
    import tensorflow as tf

    from serving import _core

    if not config.allow_reload_config:
        return None
    root = config.reload_config_allowed_root or os.path.dirname(
        _core.absolute_path(config.model_config_file or config.model_base_path or "."))
    if not tf.io.gfile.isdir(root):
        raise ServerConfigError(f"The reload root {root} is not a folder; pass the folder that holds the model base "
                                f"paths as --reload_config_allowed_root.")
    return _core.absolute_path(root)


def _watch_config(config: ServerConfig, manager: Any, last: list, stop: threading.Event) -> None:
    """Re-reads --model_config_file every --model_config_file_poll_wait_seconds and applies changes."""
    from serving import _protos

    while not stop.wait(config.model_config_file_poll_wait_seconds):
        try:
            sources = _sources(config)
            if sources != last:
                _log.info("Applying the changed model config file %s", config.model_config_file)
                manager.set_sources(sources)
                last = sources
        except (_protos.ConfigFileError, ServerConfigError) as e:
            _log.error("Ignoring the changed model config file: %s", e)


def serve(config: ServerConfig) -> ModelServer:
    """Loads the models (blocking until the present versions are loaded), then serves gRPC and REST.

    Raises ServerConfigError (one sentence) for a config mistake: a missing base path, a bad config file,
    a port in use.
    """
    from concurrent import futures

    import grpc

    from serving import _batching, _core, _grpc, _metrics, _protos, _rest

    try:
        limits = config.request_limits()
        for flag in ("tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism"):
            if getattr(config, flag) < 0:
                raise ServerConfigError(f"--{flag} must be 0 (automatic) or a number of threads, "
                                        f"got {getattr(config, flag)}.")
        if config.json_parse_process_bytes < 0:
            raise ServerConfigError(f"--json_parse_process_bytes must be 0 (parse every body in the request's "
                                    f"thread) or more, got {config.json_parse_process_bytes}.")
        sources = _sources(config)
        options = _batching.read_batching_parameters(config.batching_parameters_file) if config.enable_batching \
            else None
        prometheus_path = _prometheus_path(config)
        reload_root = _reload_root(config)
    except _protos.ConfigFileError as e:
        raise ServerConfigError(str(e)) from None
    _set_tensorflow_threads(config)
    metrics = _metrics.Metrics()
    manager = _core.ModelManager(sources, config.file_system_poll_wait_seconds,
                                 on_state=lambda m, v, s: metrics.set_version_state(m, v, s.state))
    batcher = None
    if options is not None:
        batcher = _batching.BatchScheduler(
            options, on_batch=lambda key, rows: metrics.observe_batch(key[0], key[2], rows))
    core = _core.ServingCore(manager, batcher, limits)
    message_options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                       ("grpc.max_receive_message_length", limits.max_request_bytes),
                       ("grpc.so_reuseport", 0)]  # a second server on a taken port fails instead of sharing it
    grpc_server = grpc.server(futures.ThreadPoolExecutor(config.grpc_max_threads, thread_name_prefix="grpc"),
                              options=message_options,  # RPCs beyond these wait for no thread: RESOURCE_EXHAUSTED
                              maximum_concurrent_rpcs=config.grpc_max_threads + limits.max_queued_requests)
    _grpc.add_services(grpc_server, core, metrics, reload_root=reload_root)
    rest = None
    grpc_host = config.grpc_bind_address or config.bind_address
    rest_host = config.rest_bind_address or config.bind_address
    try:
        try:
            host = f"[{grpc_host}]" if ":" in grpc_host and not grpc_host.startswith("[") else grpc_host
            grpc_port = grpc_server.add_insecure_port(f"{host}:{config.port}")
        except RuntimeError:
            grpc_port = 0
        if not grpc_port:
            raise ServerConfigError(f"Cannot listen for gRPC on {grpc_host} port {config.port}; pass a free --port "
                                    f"and an address of this machine as --grpc_bind_address.")
        if config.rest_api_port is not None:
            api = _rest.RestApi(core, metrics, config.rest_api_timeout_in_ms, prometheus_path,
                                config.json_parse_process_bytes, json_parse_processes())
            try:
                rest = _rest.RestServer((rest_host, config.rest_api_port), api)
            except OSError as e:
                api.close()
                raise ServerConfigError(f"Cannot listen for REST on {rest_host} port {config.rest_api_port} "
                                        f"({e.strerror}); pass a free --rest_api_port and an IPv4 address of this "
                                        f"machine as --rest_bind_address.") from None
    except ServerConfigError:
        grpc_server.stop(0)
        core.close()
        raise
    manager.start()
    grpc_server.start()
    if rest:
        rest.start()
    stop_event = threading.Event()
    threads = []
    if config.model_config_file and config.model_config_file_poll_wait_seconds > 0:
        threads.append(threading.Thread(target=_watch_config, args=(config, manager, sources, stop_event),
                                        name="config-watcher", daemon=True))
        threads[-1].start()
    return ModelServer(config, core, grpc_server, grpc_port, rest, stop_event, threads)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m serving.server",
        description="Serve SavedModels over TF Serving's gRPC and REST APIs, with tensorflow_model_server's flags "
                    "(runs that binary instead when it is on PATH).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--port", type=int, default=8500, help="gRPC port")
    add("--rest_api_port", type=int, default=8501, help="REST port; 0 turns REST off")
    add("--model_name", default="colorizer", help="model name for --model_base_path")
    add("--model_base_path", help="folder holding the model's numbered SavedModel version folders (local or gs://)")
    add("--model_config_file", help="ModelServerConfig text proto (models, version policy, labels); "
                                    "replaces --model_name/--model_base_path")
    add("--model_config_file_poll_wait_seconds", type=float, default=0,
        help="re-read --model_config_file this often; 0 reads it once")
    add("--enable_batching", type=_bool, nargs="?", const=True, default=False,
        help="merge concurrent requests into one model call")
    add("--batching_parameters_file", help="BatchingParameters text proto for --enable_batching")
    add("--monitoring_config_file", help="MonitoringConfig text proto; prometheus_config serves metrics "
                                         "on the REST port")
    add("--file_system_poll_wait_seconds", type=float, default=1.0,
        help="how often the base paths are checked for new versions")
    add("--rest_api_timeout_in_ms", type=int, default=30000, help="deadline of a REST request")
    add("--grpc_max_threads", type=int, default=None, help="gRPC worker threads (default 4 per CPU)")
    limits = ServerConfig()
    add("--max_inflight_requests", type=int, default=limits.max_inflight_requests,
        help="built-in server: small predict requests decoding or in an unbatched model call at once; one per CPU "
             "by default")
    add("--max_queued_requests", type=int, default=limits.max_queued_requests,
        help="built-in server: predict requests waiting for a slot; more are refused at once with "
             "RESOURCE_EXHAUSTED / HTTP 429; 16 per CPU by default")
    add("--max_request_bytes", type=int, default=limits.max_request_bytes,
        help="built-in server: largest REST body or gRPC message, and largest tensor a request may decode to")
    add("--max_request_pixels", type=int, default=limits.max_request_pixels,
        help="built-in server: most image pixels per request, all its images together (read from the headers)")
    add("--max_json_depth", type=int, default=limits.max_json_depth,
        help="built-in server: deepest nesting of a REST request's JSON")
    add("--max_inflight_pixels", type=int, default=limits.max_inflight_pixels,
        help="built-in server: image pixels of the large requests (over this / --max_inflight_requests pixels) "
             "in work at once; a large request that does not fit is refused at once with RESOURCE_EXHAUSTED / "
             "HTTP 429, and small requests never wait behind large ones; 2 million per CPU by default")
    add("--json_parse_process_bytes", type=int, default=limits.json_parse_process_bytes,
        help="built-in server: REST bodies over this many bytes are parsed in a separate process (one per 2 CPUs, "
             "one or two), so parsing a large JSON body does not pause the server's other requests; smaller ones "
             "are parsed in the request's thread; 0 parses every body there")
    add("--tensorflow_intra_op_parallelism", type=int, default=0,
        help="threads one TensorFlow op may use; 0: one per CPU")
    add("--tensorflow_inter_op_parallelism", type=int, default=0,
        help="TensorFlow ops run at once; 0: automatic (the built-in server: two per CPU, so small requests' ops "
             "are not stuck behind a large image's)")
    add("--implementation", choices=IMPLEMENTATIONS, default="auto",
        help=f"auto: {BINARY} when it is on PATH, else the built-in server")
    # built-in server only (BUILT_IN_ONLY): where it listens, and the config-reload RPC
    add("--grpc_bind_address", default="0.0.0.0", help="address gRPC listens on; 127.0.0.1 for this machine only")
    add("--rest_bind_address", default="0.0.0.0", help="IPv4 address REST listens on; 127.0.0.1 for this "
                                                        "machine only")
    add("--allow_reload_config", type=_bool, nargs="?", const=True, default=False,
        help="answer ModelService.HandleReloadConfigRequest; off, it answers PERMISSION_DENIED")
    add("--reload_config_allowed_root",
        help="with --allow_reload_config, every base path a reload names must lie under this folder "
             "(default: the folder of --model_config_file, or the parent of --model_base_path)")
    return parser


BUILT_IN_ONLY = ("grpc_bind_address", "rest_bind_address", "allow_reload_config", "reload_config_allowed_root",
                 "max_inflight_requests", "max_queued_requests", "max_request_bytes", "max_request_pixels",
                 "max_json_depth", "max_inflight_pixels", "json_parse_process_bytes")


def tensorflow_model_server_argv(args: argparse.Namespace, passthrough: Sequence[str] = ()) -> list[str]:
    """The command line that runs tensorflow_model_server with these flags (its own spelling)."""
    argv = [BINARY, f"--port={args.port}", f"--rest_api_port={args.rest_api_port}"]
    if args.model_config_file:
        argv.append(f"--model_config_file={args.model_config_file}")
        if args.model_config_file_poll_wait_seconds:
            argv.append(f"--model_config_file_poll_wait_seconds={math.ceil(args.model_config_file_poll_wait_seconds)}")
    elif args.model_base_path:
        argv += [f"--model_name={args.model_name}", f"--model_base_path={args.model_base_path}"]
    if args.enable_batching:
        argv.append("--enable_batching=true")
    for flag in ("batching_parameters_file", "monitoring_config_file", "rest_api_timeout_in_ms", "grpc_max_threads"):
        if getattr(args, flag) is not None:
            argv.append(f"--{flag}={getattr(args, flag)}")
    argv.append(f"--file_system_poll_wait_seconds={math.ceil(args.file_system_poll_wait_seconds)}")
    for flag in ("tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism"):
        if getattr(args, flag):
            argv.append(f"--{flag}={getattr(args, flag)}")
    return argv + list(passthrough)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    config = ServerConfig(
        port=args.port, rest_api_port=args.rest_api_port or None, model_name=args.model_name,
        model_base_path=args.model_base_path, model_config_file=args.model_config_file,
        model_config_file_poll_wait_seconds=args.model_config_file_poll_wait_seconds,
        enable_batching=args.enable_batching, batching_parameters_file=args.batching_parameters_file,
        monitoring_config_file=args.monitoring_config_file,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        rest_api_timeout_in_ms=args.rest_api_timeout_in_ms, max_inflight_requests=args.max_inflight_requests,
        max_queued_requests=args.max_queued_requests, max_request_bytes=args.max_request_bytes,
        max_request_pixels=args.max_request_pixels, max_json_depth=args.max_json_depth,
        max_inflight_pixels=args.max_inflight_pixels, json_parse_process_bytes=args.json_parse_process_bytes,
        tensorflow_intra_op_parallelism=args.tensorflow_intra_op_parallelism,
        tensorflow_inter_op_parallelism=args.tensorflow_inter_op_parallelism,
        grpc_bind_address=args.grpc_bind_address,
        rest_bind_address=args.rest_bind_address, allow_reload_config=args.allow_reload_config,
        reload_config_allowed_root=args.reload_config_allowed_root)
    if args.grpc_max_threads is not None:
        config.grpc_max_threads = args.grpc_max_threads
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Runs tensorflow_model_server if available, else the built-in server until SIGTERM/SIGINT."""
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)
    if not args.model_base_path and not args.model_config_file:
        print("Pass --model_base_path (a folder of numbered SavedModel versions) or --model_config_file.",
              file=sys.stderr)
        return 2
    binary = shutil.which(BINARY) if args.implementation != "python" else None
    changed = [flag for flag in BUILT_IN_ONLY if getattr(args, flag) != parser.get_default(flag)]
    if binary and changed:
        print(f"--{changed[0]} is a flag of the built-in server only; drop it or pass --implementation=python.",
              file=sys.stderr)
        return 2
    if binary:
        command = tensorflow_model_server_argv(args, passthrough)
        print("Running " + " ".join(command), file=sys.stderr, flush=True)
        os.execv(binary, command)
    if args.implementation == "binary":
        print(f"{BINARY} is not on PATH; install it or pass --implementation=python.", file=sys.stderr)
        return 2
    if passthrough:
        print(f"{passthrough[0]} is not a flag of the built-in server; it works only with {BINARY}.",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = serve(config_from_args(args))
    except ServerConfigError as e:
        print(e, file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    models = ", ".join(server.core.manager.model_names())
    rest = f"REST on port {server.rest_port}" if server.rest_port else "REST off"
    print(f"Serving {models}: gRPC on port {server.grpc_port}, {rest}", file=sys.stderr, flush=True)
    while not stop.wait(1.0):
        pass
    print("Stopping: finishing in-flight requests", file=sys.stderr, flush=True)
    started = time.monotonic()
    server.stop()
    print(f"Stopped in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
