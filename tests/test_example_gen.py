"""The ingest job: pure functions, Beam transforms, and the real job on a generated corpus."""

from __future__ import annotations

import glob
import json
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from components import example_gen
from components.example_gen import FileRef, IngestConfig, IngestError
from tests.conftest import SIZE, read_records

# ---------------------------------------------------------------- pure functions


def test_data_dirs_take_names_or_folder_names():
    assert example_gen.parse_data_dirs(["lfw=/data/lfw", "/data/Flickr8k/"]) == (
        ("lfw", "/data/lfw"),
        ("Flickr8k", "/data/Flickr8k"),
    )
    assert example_gen.parse_data_dirs(["gs://bucket/photos"]) == (("photos", "gs://bucket/photos"),)
    with pytest.raises(IngestError, match="unique"):
        example_gen.parse_data_dirs(["a=/x", "a=/y"])


def test_limits_and_splits_are_parsed_or_refused_with_the_fix():
    assert example_gen.parse_limits(["1920", "lfw=10"]) == (("*", 1920), ("lfw", 10))
    with pytest.raises(IngestError, match="NAME=N"):
        example_gen.parse_limits(["lots"])
    assert example_gen.parse_splits("train=8,test=2") == (("train", 8), ("test", 2))
    with pytest.raises(IngestError, match="train=80"):
        example_gen.parse_splits("train:80")


def test_split_depends_only_on_the_files_own_path():
    splits = (("train", 80), ("eval", 10), ("test", 10))
    paths = [f"Person_{i:04d}/Person_{i:04d}_0001.jpg" for i in range(2000)]
    first = {p: example_gen.split_for("lfw", p, splits) for p in paths}
    # the same answers whatever else is in the folder, in any order
    assert {p: example_gen.split_for("lfw", p, splits) for p in reversed(paths[::3])} == {p: first[p] for p in paths[::3]}
    counts = {s: sum(1 for v in first.values() if v == s) for s, _ in splits}
    assert 1500 < counts["train"] < 1700 and 140 < counts["eval"] < 260 and 140 < counts["test"] < 260
    # pinned: a change of the hash would silently move files between splits of existing datasets
    assert [first[p] for p in paths[:12]] == ["train", "eval", "train", "test"] + ["train"] * 8
    assert example_gen.stable_fraction("lfw/Aaron_Eckhart/Aaron_Eckhart_0001.jpg") == pytest.approx(0.2784962722)


def test_histograms_count_every_pixel_in_the_right_bin():
    packed = np.full((4, 5), 200 | (148 << 8) | (88 << 16), np.uint32)  # L code 200, a = +20, b = -40
    l_hist, ab_hist = example_gen.histograms(packed)
    assert l_hist.sum() == 20 and l_hist[200] == 20
    assert ab_hist.sum() == 20 and ab_hist[148, 88] == 20
    binned = example_gen.bin_ab(ab_hist)
    assert binned.shape == (64, 64) and binned[148 // 4, 88 // 4] == 20


# ---------------------------------------------------------------- Beam transforms


def test_exact_duplicates_keep_the_first_path():
    refs = [FileRef("s", "b.jpg", "/d/b.jpg"), FileRef("s", "a.jpg", "/d/a.jpg"), FileRef("s", "c.jpg", "/d/c.jpg")]
    with TestPipeline() as p:
        out = (
            p
            | beam.Create([("h1", refs[0]), ("h1", refs[1]), ("h2", refs[2])])
            | beam.GroupByKey()
            | beam.FlatMap(example_gen.keep_first).with_outputs("duplicates", main="unique")
        )
        assert_that(out.unique, equal_to([("h1", refs[1]), ("h2", refs[2])]), label="unique")
        assert_that(
            out.duplicates | beam.Map(lambda d: (d["path"], d["duplicate_of"])),
            equal_to([("/d/b.jpg", "/d/a.jpg")]),
            label="duplicates",
        )


def test_read_and_hash_rejects_empty_and_missing_files(tmp_path):
    good = tmp_path / "good.jpg"
    good.write_bytes(b"some bytes")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    refs = [FileRef("s", n, str(tmp_path / n)) for n in ("good.jpg", "empty.jpg", "gone.jpg")]
    with TestPipeline() as p:
        out = p | beam.Create([refs]) | beam.ParDo(example_gen.ReadAndHash()).with_outputs("rejected", main="hashed")
        assert_that(
            out.hashed | beam.Map(lambda kv: kv[1].relpath), equal_to(["good.jpg"]), label="hashed"
        )
        assert_that(
            out.rejected | beam.Map(lambda r: (os.path.basename(r["path"]), r["reason"])),
            equal_to([("empty.jpg", "empty"), ("gone.jpg", "unreadable")]),
            label="rejected",
        )


def test_to_example_writes_decodable_lab_and_rejects_with_reason(tmp_path):
    from PIL import Image

    rgb = np.zeros((80, 100, 3), np.uint8)
    rgb[:, :50] = (200, 30, 40)
    rgb[:, 50:] = (30, 60, 210)
    Image.fromarray(rgb).save(tmp_path / "ok.png")
    (tmp_path / "text.jpg").write_text("hello")
    config = IngestConfig(sources=(("s", str(tmp_path)),), output_dir=str(tmp_path), stored_size=64, min_side=64)
    refs = [("0" * 64, FileRef("s", n, str(tmp_path / n))) for n in ("ok.png", "text.jpg")]
    with TestPipeline() as p:
        out = p | beam.Create([refs]) | beam.ParDo(example_gen.ToExamples(config)).with_outputs(
            "rejected", "stats", main="examples"
        )
        assert_that(
            out.rejected | beam.Map(lambda r: (os.path.basename(r["path"]), r["reason"])),
            equal_to([("text.jpg", "not_an_image")]),
            label="rejected",
        )
        assert_that(
            out.examples | beam.Map(lambda x: (x[0] in ("train", "eval", "test"), len(x[1]))), equal_to([(True, 1)]),
            label="ok",
        )
        assert_that(
            out.stats | beam.Map(lambda e: (e[0], sum(e[1]["written"].values()), int(e[1]["l_hist"].sum()))),
            equal_to([("partial", 1, 64 * 64)]),
            label="stats",
        )


def test_a_corrupt_image_inside_a_batch_is_rejected_alone_and_the_rest_written(tmp_path):
    import tensorflow as tf

    from PIL import Image

    from schemas import decode_lab, parse_examples

    names = [f"img{i:02d}.png" for i in range(12)]
    for i, name in enumerate(names):
        rgb = np.zeros((72, 72, 3), np.uint8)
        rgb[:, :36] = (200, 20 * i, 40)
        rgb[:, 36:] = (30, 60, 210)
        Image.fromarray(rgb).save(tmp_path / name)
    good = (tmp_path / names[5]).read_bytes()
    (tmp_path / names[5]).write_bytes(good[: len(good) // 2])  # cut short in the middle of the batch
    (tmp_path / names[9]).write_bytes(b"not an image at all")
    config = IngestConfig(sources=(("s", str(tmp_path)),), output_dir=str(tmp_path), stored_size=64, min_side=64)
    batch = [(f"{i:064x}", FileRef("s", n, str(tmp_path / n))) for i, n in enumerate(names)]
    with TestPipeline() as p:
        out = p | beam.Create([batch]) | beam.ParDo(example_gen.ToExamples(config)).with_outputs(
            "rejected", "stats", main="examples"
        )
        assert_that(
            out.rejected | beam.Map(lambda r: (os.path.basename(r["path"]), r["reason"])),
            equal_to([("img05.png", "truncated"), ("img09.png", "not_an_image")]),
            label="rejected",
        )
        records = out.examples | beam.FlatMap(lambda x: [(x[0], r) for r in x[1]])
        expected = [n for n in names if n not in ("img05.png", "img09.png")]

        def check_records(found):
            parsed = parse_examples(tf.constant([r for _, r in found]))
            paths = [v.decode() for v in parsed["image/path"].numpy()]
            assert sorted(paths) == expected
            for (split, _), path in zip(found, paths):
                assert split == example_gen.split_for("s", path, config.splits)
            for stored in parsed["image/lab_codes"].numpy():
                assert decode_lab(stored, 64, 64).shape == (64, 64, 3)

        assert_that(records, check_records, label="written")
        assert_that(
            out.stats | beam.Map(lambda e: (sum(e[1]["written"].values()), int(e[1]["l_hist"].sum()),
                                            int(sum(c.sum() for c in e[1]["ab_hist"].values())))),
            equal_to([(10, 10 * 64 * 64, 10 * 64 * 64)]),
            label="stats",
        )
    counters = {r.key.metric.name: r.committed for r in p.result.metrics().query()["counters"]}
    assert counters["rejected_truncated"] == counters["rejected_not_an_image"] == 1
    assert sum(v for k, v in counters.items() if k.startswith("written_")) == 10


def test_a_memory_error_while_decoding_is_retried_and_counted_apart_from_corrupt_files(tmp_path, monkeypatch):
    from PIL import Image

    from components import decode

    names = ("flaky.png", "hopeless.png", "fine.png")
    for i, name in enumerate(names):
        rgb = np.zeros((80, 80, 3), np.uint8)
        rgb[:, :40] = (200, 30 + i, 40)
        rgb[:, 40:] = (30, 60, 210)
        Image.fromarray(rgb).save(tmp_path / name)
    contents = {(tmp_path / name).read_bytes(): name for name in names}
    calls = {name: 0 for name in names}
    real = decode.decode_and_crop

    def short_of_memory(data, **kwargs):  # flaky: once; hopeless: every time
        name = contents[data]
        calls[name] += 1
        if name == "hopeless.png" or (name == "flaky.png" and calls[name] == 1):
            raise MemoryError()
        return real(data, **kwargs)

    monkeypatch.setattr(decode, "decode_and_crop", short_of_memory)
    monkeypatch.setattr(example_gen, "MEMORY_RETRY_WAITS_S", (0.01, 0.05))
    config = IngestConfig(sources=(("s", str(tmp_path)),), output_dir=str(tmp_path), stored_size=64, min_side=64)
    refs = [(str(i) * 64, FileRef("s", n, str(tmp_path / n))) for i, n in enumerate(names)]
    with TestPipeline() as p:
        out = p | beam.Create([refs]) | beam.ParDo(example_gen.ToExamples(config)).with_outputs(
            "rejected", "stats", main="examples"
        )
        assert_that(
            out.rejected | beam.Map(lambda r: (os.path.basename(r["path"]), r["reason"], r["detail"])),
            equal_to([("hopeless.png", "out_of_memory", "Decoding ran out of memory on all 3 tries; ingest this "
                       "file on workers with more memory or lower --max_pixels.")]),
            label="rejected",
        )
        assert_that(out.examples | beam.FlatMap(lambda x: x[1]) | beam.Map(lambda r: 1), equal_to([1, 1]), label="written")
        assert_that(out.stats | beam.Map(lambda e: sum(e[1]["written"].values())), equal_to([2]), label="stats")
    assert calls == {"flaky.png": 2, "hopeless.png": 3, "fine.png": 1}
    counters = {r.key.metric.name: r.committed for r in p.result.metrics().query()["counters"]}
    assert counters["rejected_out_of_memory"] == 1 and counters["decode_memory_retries"] == 3
    assert "rejected_corrupt" not in counters and counters["written_train"] + counters.get(
        "written_eval", 0) + counters.get("written_test", 0) == 2


# ---------------------------------------------------------------- the real job


def _rejections(output_dir: str) -> dict:
    with open(os.path.join(output_dir, "rejected.jsonl")) as f:
        return {r["path"]: r for r in map(json.loads, f)}


def test_every_bad_file_is_rejected_with_its_reason(ingested, ingest_config, corpus_dirs):
    _, expected, _, _ = corpus_dirs
    rejected = _rejections(ingest_config.output_dir)
    assert {path: rejected[path]["reason"] for path in expected if path in rejected} == expected
    for record in rejected.values():
        assert record["detail"].endswith(".") and len(record["detail"]) > 10


def test_counts_add_up_and_duplicates_are_dropped(ingested, ingest_config, corpus_dirs):
    sources, expected, odd_valid, copies = corpus_dirs
    files = ingested["files"]
    assert files["invariant_holds"]
    assert files["written"] + files["rejected"] + files["duplicates"] == files["found"]
    assert files["found"] == 40 + len(copies) + len(expected) + len(odd_valid)
    assert files["duplicates"] == len(copies)
    assert files["rejected"] == len(expected)
    assert files["written"] == 40 + len(odd_valid)
    with open(os.path.join(ingest_config.output_dir, "duplicates.jsonl")) as f:
        dropped = sorted(json.loads(line)["path"] for line in f)
    assert len(dropped) == len(copies)
    assert sum(e["count"] for e in ingested["splits"].values()) == files["written"]
    assert sorted(ingested["splits"]) == ["eval", "test", "train"]


def test_records_decode_back_to_the_source_colours(ingested, ingest_config):
    import tensorflow as tf

    from components.color import lab_to_rgb, rgb_to_lab
    from components.decode import decode_and_crop
    from schemas import decode_lab, dequantize_lab, parse_examples, quantize_lab

    records = read_records(ingest_config.output_dir, "train")
    assert records
    parsed = parse_examples(tf.constant(records))
    roots = dict(ingest_config.sources)
    checked = 0
    for i in range(len(records)):
        source = parsed["image/source"][i].numpy().decode()
        path = os.path.join(roots[source], parsed["image/path"][i].numpy().decode())
        with open(path, "rb") as f:
            crop, _ = decode_and_crop(f.read(), size=SIZE, min_side=SIZE, max_pixels=10**8, min_colorfulness=0)
        rgb = np.round(lab_to_rgb(decode_lab(parsed["image/lab_codes"][i], SIZE, SIZE)).numpy() * 255)
        exact = quantize_lab(rgb_to_lab(crop.astype(np.float32) / 255.0))
        expected = np.round(lab_to_rgb(dequantize_lab(exact)).numpy() * 255)
        # the record holds exactly the quantised LAB of its source's crop...
        assert np.abs(rgb - expected).mean() < 0.05, path
        # ...and 8-bit LAB costs at most a few RGB levels (8 on pure primaries at the gamut's edge)
        error = np.abs(rgb - crop.astype(np.float64))
        assert error.mean() < 2.5 and error.max() <= 12, path
        assert int(parsed["image/height"][i]) == int(parsed["image/width"][i]) == SIZE
        checked += 1
    assert checked == len(records)


def test_statistics_describe_the_written_data(ingested, ingest_config):
    stats = ingested
    assert stats["stored_size"] == SIZE
    assert stats["pixels"] == stats["files"]["written"] * SIZE * SIZE
    assert sum(stats["l_histogram"]["counts"]) == stats["pixels"]
    assert np.asarray(stats["ab_histogram"]["counts"]).sum() == stats["pixels"]
    assert stats["mean_colorfulness"] > 10
    assert stats["sources"]["scenes"]["written"] == 40
    assert stats["sources"]["odd"]["rejected"] == stats["files"]["rejected"]
    picture = os.path.join(ingest_config.output_dir, "statistics", "ab_histogram.png")
    from PIL import Image

    with Image.open(picture) as image:
        assert image.size == (256, 256) and image.mode == "RGB"
        pixels = np.asarray(image)
        assert pixels.std() > 5  # not a blank picture


def test_schema_pbtxt_and_validation_report(ingested, ingest_config):
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    from components import validator
    from schemas import FEATURES

    with open(os.path.join(ingest_config.output_dir, "schema", "schema.pbtxt")) as f:
        schema = text_format.Parse(f.read(), schema_pb2.Schema())
    assert [f.name for f in schema.feature] == [f.name for f in FEATURES]
    report = validator.run_validation(ingest_config.output_dir, ["--runner=DirectRunner"])
    assert report["anomalies"] == []
    assert sum(report["records_checked"].values()) == ingested["files"]["written"]
    sampled = validator.run_validation(ingest_config.output_dir, ["--runner=DirectRunner"], sample_rate=0.3)
    again = validator.run_validation(ingest_config.output_dir, ["--runner=DirectRunner"], sample_rate=0.3)
    checked = sum(sampled["records_checked"].values())
    assert 0 < checked < ingested["files"]["written"] and sampled["records_checked"] == again["records_checked"]
    assert sum(sampled["records_read"].values()) == ingested["files"]["written"]


def test_validator_fails_on_records_that_break_the_schema(ingested, ingest_config, tmp_path):
    import shutil

    from components import validator
    from components.tfrecord_sink import tfrecord_frame
    from schemas import make_example

    out = tmp_path / "broken"
    shutil.copytree(ingest_config.output_dir, out)
    bad = make_example(lab_codes=b"too short", height=SIZE, width=SIZE, source="x", path="y.jpg", sha256="0" * 64,
                       colorfulness=1.0).SerializeToString()
    with open(out / "examples" / "train" / "data-99999-of-99999.tfrecord", "wb") as f:
        f.write(tfrecord_frame(bad))
    short = f"holds 9 bytes, height x width x 3 = {SIZE}x{SIZE}x3 is {SIZE * SIZE * 3}"
    with pytest.raises(validator.ValidationError, match=short):
        validator.run_validation(str(out), ["--runner=DirectRunner"])
    report = json.loads((out / "anomalies.json").read_text())
    problems = " ".join(a["problem"] for a in report["anomalies"])
    assert short in problems and "statistics say" in problems


def test_the_record_reader_reads_tensorflows_files_and_names_a_damaged_one(tmp_path):
    import gzip

    import tensorflow as tf

    from components.tfrecord_sink import CorruptRecordError, read_tfrecord_file, tfrecord_frame

    records = [b"", b"x", bytes(range(256)) * 700]
    plain, zipped = str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord.gz")
    with tf.io.TFRecordWriter(plain) as writer:
        for record in records:
            writer.write(record)
    with tf.io.TFRecordWriter(zipped, options="GZIP") as writer:
        for record in records:
            writer.write(record)
    assert [r for _, r in read_tfrecord_file(plain)] == records
    assert list(read_tfrecord_file(zipped)) == [(zipped, r) for r in records]

    data = (tmp_path / "a.tfrecord").read_bytes()
    damaged = bytearray(data)
    damaged[16 + 16 + 1 + 100] ^= 1  # a byte inside the third record
    for name, content, message in (
        ("flipped.tfrecord", bytes(damaged), "a record of 179200 bytes does not match its CRC at byte 33"),
        ("short.tfrecord", data[:-10], "the file ends inside a record of 179200 bytes at byte 33"),
        ("header.tfrecord", data[:20], "the file ends inside a record's length at byte 16"),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CorruptRecordError, match=message) as raised:
            list(read_tfrecord_file(str(path)))
        assert str(raised.value).startswith(f"{path} is not a valid TFRecord file")
    assert data == b"".join(tfrecord_frame(r) for r in records)  # our writer frames as TensorFlow does
    (tmp_path / "c.tfrecord.gz").write_bytes(gzip.compress(bytes(damaged)))
    with pytest.raises(CorruptRecordError, match="does not match its CRC"):
        list(read_tfrecord_file(str(tmp_path / "c.tfrecord.gz")))


def test_the_validator_names_a_damaged_record_file_in_one_sentence(ingested, ingest_config, tmp_path):
    import shutil

    from components import validator

    out = tmp_path / "damaged copy"  # a space in the path: the sentence still names the whole path
    shutil.copytree(ingest_config.output_dir, out)
    path = sorted((out / "examples" / "train").glob("*.tfrecord"))[0]
    data = bytearray(path.read_bytes())
    data[100] ^= 1  # inside the first record
    path.write_bytes(bytes(data))
    length = int.from_bytes(data[:8], "little")
    with pytest.raises(validator.ValidationError) as raised:
        validator.run_validation(str(out), ["--runner=DirectRunner"])
    assert str(raised.value) == (
        f"{path} is not a valid TFRecord file: a record of {length} bytes "
        "does not match its CRC at byte 0 of its uncompressed data; it was damaged after it was written, so write "
        "it again (re-run the job that wrote it)."
    )


def test_a_runners_wrapped_error_gives_back_the_damaged_files_whole_sentence():
    from components.tfrecord_sink import CorruptRecordError

    sentence = ("/data/my ingest/examples/train/data-00000-of-00002.tfrecord is not a valid TFRecord file: a record's "
                "length does not match its CRC at byte 12 of its uncompressed data; it was damaged after it was "
                "written, so write it again (re-run the job that wrote it).")
    wrapped = RuntimeError(f"Traceback (most recent call last):\n  File \"x.py\", line 1, in process\n"
                           f"components.tfrecord_sink.CorruptRecordError: {sentence} [while running 'ReadRecords']")
    assert CorruptRecordError.sentence_in(wrapped) == sentence
    assert CorruptRecordError.sentence_in(CorruptRecordError(sentence)) == sentence
    assert CorruptRecordError.sentence_in(RuntimeError("something else failed")) is None


def test_ingest_writes_uncompressed_raw_codes_and_the_validator_refuses_version_1_output(ingested, ingest_config,
                                                                                          tmp_path):
    from components import validator
    from schemas import SCHEMA_VERSION, old_records_error
    from tests.conftest import write_v1_examples

    files = glob.glob(os.path.join(ingest_config.output_dir, "examples", "*", "*"))
    assert files and all(f.endswith(".tfrecord") for f in files)
    assert ingested["schema_version"] == SCHEMA_VERSION == 2
    records = read_records(ingest_config.output_dir, "train")
    # nothing but the codes and the small features: the record is barely larger than SIZE x SIZE x 3
    assert all(SIZE * SIZE * 3 < len(r) < SIZE * SIZE * 3 + 400 for r in records)

    train = write_v1_examples(str(tmp_path / "old"))
    with pytest.raises(validator.ValidationError) as raised:
        validator.run_validation(str(tmp_path / "old"), ["--runner=DirectRunner"])
    assert str(raised.value) == old_records_error(os.path.dirname(train), 1)
    assert validator.main(["--output_dir", str(tmp_path / "old")]) == 2


def test_same_input_twice_gives_the_same_records_even_multi_process(ingested, ingest_config, tmp_path):
    from components.example_gen import run_ingest

    again = ingest_config._replace(output_dir=str(tmp_path / "again"))
    run_ingest(again, ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    for split in ("train", "eval", "test"):
        first = sorted(read_records(ingest_config.output_dir, split))
        second = sorted(read_records(again.output_dir, split))
        assert first == second and (split != "train" or first)


def test_per_source_limit_is_a_stable_sample(corpus_dirs, tmp_path):
    from components.example_gen import run_ingest

    sources, *_ = corpus_dirs
    config = IngestConfig(sources=sources[:1], output_dir=str(tmp_path / "a"), limits=(("scenes", 10),),
                          stored_size=SIZE, min_side=SIZE)
    stats = run_ingest(config, ["--runner=DirectRunner"])
    assert stats["files"]["found"] == 10 and stats["files"]["over_limit"] == 32
    again = run_ingest(config._replace(output_dir=str(tmp_path / "b")), ["--runner=DirectRunner"])
    paths = lambda d: sorted(  # noqa: E731
        r for s in ("train", "eval", "test") for r in read_records(d, s)
    )
    assert paths(config.output_dir) == paths(str(tmp_path / "b")) and again["files"] == stats["files"]


# ---------------------------------------------------------------- the CLI


def test_cli_ingests_validates_and_refuses_to_mix_runs(corpus_dirs, tmp_path, capsys):
    sources, expected, _, _ = corpus_dirs
    out = str(tmp_path / "cli")
    argv = ["--data_dir", f"scenes={sources[0][1]}", "--data_dir", f"odd={sources[1][1]}", "--output_dir", out,
            "--stored_size", str(SIZE), "--min_side", str(SIZE), "--runner=DirectRunner"]
    assert example_gen.main(argv) == 0
    printed = capsys.readouterr().out
    assert "adds up" in printed and "Validated" in printed and "0 anomalies" in printed
    counters = dict(item.split("=") for item in printed.split("Beam counters: ")[1].splitlines()[0].split(", "))
    for reason in set(expected.values()):
        assert int(counters[f"rejected_{reason}"]) == list(expected.values()).count(reason), reason
    assert example_gen.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert example_gen.main(argv + ["--overwrite", "--validation", "sample"]) == 0


def test_cli_names_a_missing_or_empty_data_dir(tmp_path, capsys):
    code = example_gen.main(["--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    code = example_gen.main(["--data_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o2"),
                             "--runner=DirectRunner"])
    assert code == 2 and "no image files" in capsys.readouterr().err


def test_cli_refuses_an_output_dir_inside_a_data_dir(corpus_dirs, capsys):
    sources, *_ = corpus_dirs
    code = example_gen.main(["--data_dir", sources[0][1], "--output_dir", sources[0][1] + "/ingest"])
    assert code == 2 and "inside data dir" in capsys.readouterr().err
