"""Load on loopback: 16 concurrent clients, gRPC and REST mixed, batching on, a new version published mid-run.

Each client waits THINK_S between requests, so the 200 requests span about three seconds and the
version published after request 32 has time to load while traffic continues. A second test pushes
twice, as the pusher does, while the clients name the labels stable and canary for PHASE_S before,
between and after the pushes (30 s in all, the issue's 30-45 s label load test).
"""

from __future__ import annotations

import base64
import io
import threading
import time

from PIL import Image

from components.pusher.publish import DEFAULT_BATCHING, models_config_text, write_text
from components.pusher.publish import publish as push_version
from serving import client
from serving import server as server_lib
from tests.test_server import built_model, grpc_predict, image_bytes, publish, rest, serving_config, version_of

CLIENTS = 16
REQUESTS = 200
PUBLISH_AFTER = 32
THINK_S = 0.2
TIME_LIMIT_S = 30.0
PHASE_S = 10.0


def test_mixed_load_has_no_failures_and_switches_to_a_version_published_mid_run(tmp_path):
    base = str(tmp_path / "colorizer")
    publish(base, 1)
    built_model(2)
    params = tmp_path / "batching_parameters.txt"  # what the pusher writes
    params.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 2000 } "
                      "max_enqueued_batches { value: 100 } num_batch_threads { value: 2 }")
    config = serving_config(model_base_path=base, enable_batching=True, batching_parameters_file=str(params),
                         file_system_poll_wait_seconds=0.1)
    images = [image_bytes(16 + k % 5, 20 + k % 7, seed=k) for k in range(CLIENTS)]
    lock = threading.Lock()
    issued = 0
    finished: list[tuple[float, str, int]] = []
    failures: list[str] = []
    with server_lib.serve(config) as running:
        colorizers = {"grpc": client.Colorizer(f"127.0.0.1:{running.grpc_port}", "grpc", retries=0, deadline=20),
                      "rest": client.Colorizer(f"127.0.0.1:{running.rest_port}", "rest", retries=0, deadline=20)}

        def next_request() -> int | None:
            nonlocal issued
            with lock:
                if issued >= REQUESTS:
                    return None
                issued += 1
                return issued

        def run_client(k: int) -> None:
            protocol = "grpc" if k % 2 else "rest"
            expected_size = Image.open(io.BytesIO(images[k])).size
            while (number := next_request()) is not None:
                time.sleep(THINK_S)
                if number == PUBLISH_AFTER:
                    publish(base, 2)  # atomic rename of a complete folder into the base path
                try:
                    png = colorizers[protocol].colorize(images[k])
                    assert Image.open(io.BytesIO(png)).size == expected_size
                    with lock:
                        finished.append((time.monotonic(), protocol, version_of(png)))
                except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                    with lock:
                        failures.append(f"{protocol} request {number}: {e!r}")

        started = time.monotonic()
        threads = [threading.Thread(target=run_client, args=(k,)) for k in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIME_LIMIT_S)
        elapsed = time.monotonic() - started
        for colorizer in colorizers.values():
            colorizer.close()

    assert not failures, failures[:5]
    assert len(finished) == REQUESTS and elapsed < TIME_LIMIT_S
    versions = [version for _, _, version in sorted(finished)]
    assert versions[0] == 1 and set(versions) == {1, 2}
    assert versions[-CLIENTS:] == [2] * CLIENTS, versions
    switch = versions.index(2)
    assert all(v == 2 for v in versions[switch + CLIENTS:]), "responses must not go back to the old version"
    assert {protocol for _, protocol, _ in finished} == {"grpc", "rest"}
    print(f"{REQUESTS} requests from {CLIENTS} clients in {elapsed:.1f} s ({REQUESTS / elapsed:.0f}/s); "
          f"version 2 from response {switch + 1}")


def test_requests_naming_labels_never_fail_while_the_pusher_publishes_two_versions(tmp_path):
    serving = tmp_path / "serving"
    base = str(serving / "colorizer")
    publish(base, 1)
    config_file = str(serving / "models.config")
    write_text(config_file, models_config_text(str(serving)))
    for version in (2, 3):
        built_model(version)
    config = serving_config(model_config_file=config_file, model_config_file_poll_wait_seconds=0.2,
                            file_system_poll_wait_seconds=0.1)
    labels = ("stable", "canary", None)
    lock, stop = threading.Lock(), threading.Event()
    served: list[tuple[float, str | None, int]] = []
    failures: list[str] = []
    with server_lib.serve(config) as running:
        def run_client(k: int) -> None:
            label, image = labels[k % 3], image_bytes(16, 20, seed=k)
            while not stop.is_set():
                try:
                    if k % 2:
                        response = grpc_predict(running.grpc_port, {"image_bytes": [image]}, label=label)
                        version = version_of(response.outputs["colorized_bytes"].string_val[0])
                    else:
                        path = f"colorizer/labels/{label}:predict" if label else "colorizer:predict"
                        status, body = rest(running.rest_port, path, {"instances": [{"b64": base64.b64encode(
                            image).decode()}]})
                        assert status == 200, body
                        version = version_of(base64.b64decode(body["predictions"][0]["b64"]))
                    with lock:
                        served.append((time.monotonic(), label, version))
                except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                    with lock:
                        failures.append(f"label {label}: {e!r}")
                time.sleep(THINK_S / 4)

        threads = [threading.Thread(target=run_client, args=(k,)) for k in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for version in (2, 3):  # as the pusher does: the version folder, then models.config
            time.sleep(PHASE_S)
            staging = publish(base, version, rename=False)
            push_version(staging, str(serving), "colorizer", version, DEFAULT_BATCHING)
        time.sleep(PHASE_S)
        stop.set()
        for thread in threads:
            thread.join(TIME_LIMIT_S)

    assert not failures, failures[:5]
    last = {label: version for _, label, version in sorted(served)}
    assert last == {"stable": 2, "canary": 3, None: 3}
    seen = {label: {version for _, named, version in served if named == label} for label in labels}
    assert seen == {"stable": {1, 2}, "canary": {1, 2, 3}, None: {1, 2, 3}}, seen
    print(f"{len(served)} requests naming stable, canary or no label, two pushes, no failure")
