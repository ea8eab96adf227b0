"""Client: folders colorized over gRPC and REST, per-file failures, retries against a late server, naming."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest
from PIL import Image

from serving import client
from serving import server as server_lib
from tests.test_server import NOT_IMAGE, free_port, image_bytes, publish, serving_config, version_of


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("client_serving") / "colorizer")
    publish(base, 1)
    with server_lib.serve(serving_config(model_base_path=base)) as running:
        yield running


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> str:
    """A nested folder: JPEG, PNG, GIF and BMP images, one corrupt JPEG, and a text file that is skipped."""
    root = tmp_path_factory.mktemp("photos")
    (root / "trip" / "day2").mkdir(parents=True)
    (root / "a.jpg").write_bytes(image_bytes(20, 30, seed=1))
    (root / "trip" / "b.png").write_bytes(image_bytes(16, 12, seed=2, fmt="PNG"))
    (root / "trip" / "day2" / "c.gif").write_bytes(image_bytes(10, 14, seed=3, fmt="GIF"))
    (root / "trip" / "day2" / "d.BMP").write_bytes(image_bytes(9, 11, seed=4, fmt="BMP"))
    (root / "trip" / "broken.jpg").write_bytes(b"\xff\xd8 these bytes were cut off")
    (root / "trip" / "notes.txt").write_text("not an image")
    return str(root)


EXPECTED = {"a.png": (30, 20), "trip/b.png": (12, 16), "trip/day2/c.png": (14, 10), "trip/day2/d.png": (11, 9)}


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_client_colorizes_a_nested_folder_and_reports_the_corrupt_file(server, photos, protocol, tmp_path, capsys):
    out = tmp_path / "out"
    port = server.grpc_port if protocol == "grpc" else server.rest_port
    code = client.main([photos, "--output_dir", str(out), "--server", f"127.0.0.1:{port}", "--protocol", protocol,
                        "--concurrency", "3", "--deadline", "20"])
    assert code == 1
    written = {os.path.relpath(os.path.join(d, f), out).replace(os.sep, "/"): os.path.join(d, f)
               for d, _, files in os.walk(out) for f in files}
    assert set(written) == set(EXPECTED)
    for name, path in written.items():
        with open(path, "rb") as f:
            png = f.read()
        assert Image.open(io.BytesIO(png)).size == EXPECTED[name]
        assert version_of(png) == 1
    captured = capsys.readouterr()
    assert f"FAILED {os.path.join(photos, 'trip', 'broken.jpg')}: " in captured.err
    assert captured.err.count("FAILED") == 1
    assert f"Wrote 4 images to {out} in " in captured.out and "; 1 failed." in captured.out


def test_colorize_files_library_api_and_single_files(server, photos, tmp_path):
    summary = client.colorize_files([os.path.join(photos, "a.jpg"), os.path.join(photos, "trip", "broken.jpg")],
                                    str(tmp_path), server=f"127.0.0.1:{server.rest_port}", protocol="rest",
                                    concurrency=1)
    assert summary.written == [(os.path.join(photos, "a.jpg"), str(tmp_path / "a.png"))]
    assert summary.failed == [(os.path.join(photos, "trip", "broken.jpg"), NOT_IMAGE)]


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_retries_reach_a_server_that_starts_late(tmp_path, protocol):
    base = str(tmp_path / "colorizer")
    publish(base, 1)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jpg").write_bytes(image_bytes(seed=5))
    grpc_port, rest_port = free_port(), free_port()
    address = f"127.0.0.1:{grpc_port if protocol == 'grpc' else rest_port}"
    with pytest.raises(client.RequestFailed) as raised:  # nothing listens yet, and no retries
        client.colorize_files([str(tmp_path / "in")], str(tmp_path / "out"), server=address, protocol=protocol,
                              retries=0)
    assert raised.value.retryable and f"cannot reach {address}" in str(raised.value)

    started: list = []
    config = serving_config(model_base_path=base)
    config.port, config.rest_api_port = grpc_port, rest_port
    starter = threading.Timer(1.0, lambda: started.append(server_lib.serve(config)))
    starter.start()
    try:
        begun = time.monotonic()
        summary = client.colorize_files([str(tmp_path / "in")], str(tmp_path / "out"), server=address,
                                        protocol=protocol, retries=5, deadline=10)
        assert time.monotonic() - begun >= 0.9
        assert not summary.failed and [os.path.basename(t) for _, t in summary.written] == ["x.png"]
    finally:
        starter.join()
        for running in started:
            running.stop()


def test_requests_over_grpcs_default_4_mib_limit_reach_the_model(server):
    with client.Colorizer(f"127.0.0.1:{server.grpc_port}", "grpc", retries=0) as colorizer:
        with pytest.raises(client.RequestFailed) as raised:
            colorizer.colorize(b"\0" * (5 * 1024 * 1024))
    assert str(raised.value) == NOT_IMAGE and not raised.value.retryable


def test_retry_policy_backs_off_on_transient_errors_only():
    pauses: list[float] = []
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise client.RequestFailed("unavailable", retryable=True)
        return "ok"

    assert client._with_retries(flaky, retries=3, sleep=pauses.append) == "ok"
    assert pauses == [0.5, 1.0]

    attempts.clear()

    def bad_image():
        attempts.append(1)
        raise client.RequestFailed("Unknown image file format.", retryable=False)

    with pytest.raises(client.RequestFailed):
        client._with_retries(bad_image, retries=3, sleep=pauses.append)
    assert len(attempts) == 1


def test_outputs_keep_the_input_suffix_when_names_would_collide(tmp_path):
    for name in ("a.jpg", "a.png", "b.jpeg"):
        (tmp_path / name).write_bytes(b"x")
    pairs = client.find_images([str(tmp_path)], "OUT")
    assert [os.path.relpath(t, "OUT") for _, t in pairs] == ["a.jpg.png", "a.png.png", "b.png"]


def test_client_mistakes_exit_2_with_one_sentence(server, photos, tmp_path, capsys):
    address = f"127.0.0.1:{server.grpc_port}"
    assert client.main([str(tmp_path / "missing"), "--output_dir", str(tmp_path), "--server", address]) == 2
    assert capsys.readouterr().err.strip() == f"{tmp_path / 'missing'} does not exist; pass image files or folders " \
                                             "of images."
    (tmp_path / "empty").mkdir()
    assert client.main([str(tmp_path / "empty"), "--output_dir", str(tmp_path), "--server", address]) == 2
    assert "No JPEG, PNG, GIF or BMP files found" in capsys.readouterr().err
    assert client.main([photos, "--output_dir", str(tmp_path), "--server", address, "--signature_name",
                        "scale"]) == 2
    assert capsys.readouterr().err.strip() == (
        "Signature 'scale' takes offset, x; this client sends one encoded image to a single DT_STRING input, so pick "
        "another --signature_name.")
    assert client.main([photos, "--output_dir", str(tmp_path), "--server", address, "--model_name", "nope",
                        "--retries", "0"]) == 1
    assert "Model 'nope' is not served here" in capsys.readouterr().err
