"""`lens bag` end to end on small rosbag2 files written here with rosbags (mcap and sqlite3), read back with rosbags."""

import io
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import ros_helpers  # noqa: E402

# installed by the setup: a broken install must fail here, not skip these tests
import rosbags  # noqa: F401
import yaml
from conftest import file_states
from PIL import Image
from rosbags.rosbag2 import Reader, StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import get_types_from_msg  # noqa: E402

from lens_cli import main  # noqa: E402
from lens_model.errors import PromptError  # noqa: E402
from lens_model.inference.answer import smart_resize  # noqa: E402
from lens_model.inference.pipeline import LensPipeline  # noqa: E402
from lens_ros.bag import BagError, lens_typestore, process_bag  # noqa: E402
from lens_ros.conversions import image_to_array
from lens_ros.messages import array_to_image

H, W = 24, 32
PROMPT = "the red cup"
ANSWER = "<|box_start|>(2,3),(20,15)<|box_end|>"  # what the box model below always answers
CAMERA = "/camera/image_raw"
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}


@pytest.fixture(scope="module")
def ts():
    return lens_typestore()


@pytest.fixture(scope="module")
def box_model_dir(tiny_dir, tmp_path_factory):
    """The tiny checkpoint whose generation config biases greedy decoding towards one fixed grounding answer, so
    that the untrained model answers with a box (transformers' `sequence_bias`; the weights are unchanged)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("box_model") / "lens-tiny-box"
    shutil.copytree(tiny_dir, out)
    ids = AutoTokenizer.from_pretrained(str(tiny_dir)).encode(ANSWER + "<|im_end|>", add_special_tokens=False)
    config = json.loads((out / "generation_config.json").read_text())
    config["sequence_bias"] = [[ids[:1], 100.0]] + [[ids[: i + 1], 1000.0] for i in range(1, len(ids))]
    (out / "generation_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def tiny_pipe(tiny_dir):
    return LensPipeline.from_pretrained(str(tiny_dir), device="cpu", max_new_tokens=4)


def header(ts, i):
    return ros_helpers.header(ts, sec=1000 + i, nanosec=1000 * i + 7, frame="camera_optical")


def frame(i):
    return np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)


def bag_time(i):
    return 5_000_000_000 + i * 100_000_000


def write_bag(path: Path, ts, storage="mcap", n=4, compressed=False, bad_frames=(), topic=CAMERA):
    """n camera frames (stamps 1000+i s) interleaved with a std_msgs/String topic, like a real recording."""
    t = ts.types
    with Writer(path, version=9, storage_plugin=STORAGES[storage]) as writer:
        msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
        cam = writer.add_connection(topic, msgtype, typestore=ts)
        chat = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=ts)
        writer.write(
            chat,
            bag_time(0) - 1,
            bytes(ts.serialize_cdr(t["std_msgs/msg/String"](data="start"), "std_msgs/msg/String")),
        )
        for i in range(n):
            if compressed:
                buffer = io.BytesIO()
                Image.fromarray(frame(i)).save(buffer, format="JPEG" if i % 2 else "PNG")
                data = buffer.getvalue()[: 40 if i in bad_frames else None]
                msg = t[msgtype](
                    header=header(ts, i), format="jpeg" if i % 2 else "png", data=np.frombuffer(data, np.uint8)
                )
            else:
                msg = array_to_image(frame(i), "rgb8", header(ts, i), t)
                if i in bad_frames:
                    msg.encoding = "yuv422"
            writer.write(cam, bag_time(i), bytes(ts.serialize_cdr(msg, msgtype)))
            writer.write(
                chat,
                bag_time(i) + 1,
                bytes(ts.serialize_cdr(t["std_msgs/msg/String"](data=f"msg {i}"), "std_msgs/msg/String")),
            )
    return path


def write_custom_bag(path: Path, version: int, storage: str, topic: str, msgtype: str, definition: str, **values):
    """A bag with one message of a custom type (`definition`) on `topic`, then one camera frame; returns the
    typestore that knows the custom type."""
    custom = lens_typestore()
    custom.register(get_types_from_msg(definition, msgtype))
    with Writer(path, version=version, storage_plugin=STORAGES[storage]) as writer:
        cam = writer.add_connection(CAMERA, "sensor_msgs/msg/Image", typestore=custom)
        conn = writer.add_connection(topic, msgtype, typestore=custom)
        writer.write(conn, 1, bytes(custom.serialize_cdr(custom.types[msgtype](**values), msgtype)))
        writer.write(
            cam,
            2,
            bytes(
                custom.serialize_cdr(
                    array_to_image(frame(0), "rgb8", header(custom, 0), custom.types), "sensor_msgs/msg/Image"
                )
            ),
        )
    return custom


def read_bag(path: Path, ts):
    """{topic: [(bag timestamp, message, raw bytes)]}, and the storage identifier from metadata.yaml."""
    out = {}
    with Reader(path) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        for conn, timestamp, raw in reader.messages():
            out.setdefault(conn.topic, []).append((timestamp, ts.deserialize_cdr(raw, conn.msgtype), bytes(raw)))
    storage = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["storage_identifier"]
    return out, types, storage


def run(capsys, *args):
    code = main(["bag", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("storage,every,n", [("mcap", 1, 3), ("sqlite3", 2, 4)])
def test_lens_bag_end_to_end(capsys, tmp_path, ts, box_model_dir, storage, every, n):
    src = write_bag(tmp_path / "in", ts, storage=storage, n=n)
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys,
        "--in",
        src,
        "--out",
        out,
        "--image-topic",
        CAMERA,
        "--prompt",
        PROMPT,
        "--every",
        every,
        "--model",
        box_model_dir,
        "--device",
        "cpu",
        "--max-new-tokens",
        "24",
    )
    assert code == 0, err
    segmented = list(range(0, n, every))
    summary = json.loads(stdout)
    assert (summary["frames"], summary["segmented"], summary["with_box"], summary["failed"]) == (
        n,
        len(segmented),
        len(segmented),
        [],
    )
    assert summary["storage"] == storage and summary["image_type"] == "sensor_msgs/msg/Image"

    got, types, got_storage = read_bag(out, ts)
    source, _, _ = read_bag(src, ts)
    assert got_storage == storage
    assert types == {
        CAMERA: "sensor_msgs/msg/Image",
        "/chatter": "std_msgs/msg/String",
        "/lens/mask": "sensor_msgs/msg/Image",
        "/lens/masks": "sensor_msgs/msg/Image",
        "/lens/detections": "vision_msgs/msg/Detection2DArray",
        "/lens/reasoning": "std_msgs/msg/String",
    }
    counts = {topic: len(messages) for topic, messages in got.items()}
    assert counts == {
        CAMERA: n,
        "/chatter": n + 1,
        "/lens/mask": len(segmented),
        "/lens/masks": len(segmented),
        "/lens/detections": len(segmented),
        "/lens/reasoning": len(segmented),
    }
    assert summary["topics"] == counts
    for topic in (CAMERA, "/chatter"):  # input messages copied byte for byte, same bag timestamps
        assert [(t, raw) for t, _, raw in got[topic]] == [(t, raw) for t, _, raw in source[topic]]

    # what the pipeline itself gives for each segmented frame: the detection carries its score, the mask its mask
    direct = LensPipeline.from_pretrained(str(box_model_dir), device="cpu", max_new_tokens=24)
    want = [direct(frame(i), PROMPT) for i in segmented]
    mh, mw = smart_resize(H, W, 28, *_pixel_bounds(box_model_dir))  # the MLLM's image; the answer's box is in it
    x1, y1, x2, y2 = 2 * W / mw, 3 * H / mh, 20 * W / mw, 15 * H / mh
    for k, i in enumerate(segmented):
        stamp = (1000 + i, 1000 * i + 7, "camera_optical")
        for topic in ("/lens/mask", "/lens/detections"):
            timestamp, msg, _ = got[topic][k]
            assert timestamp == bag_time(i)
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec, msg.header.frame_id) == stamp
        mask = got["/lens/mask"][k][1]
        assert (mask.encoding, mask.height, mask.width, mask.step) == ("mono8", H, W, W)
        assert image_to_array(mask).shape == (H, W) and set(np.unique(image_to_array(mask))) <= {0, 255}
        assert np.array_equal(image_to_array(mask) == 255, want[k].mask)
        labels = image_to_array(got["/lens/masks"][k][1])  # one target: label 1 where the mask is
        assert np.array_equal(labels, want[k].mask.astype(np.uint8))
        (det,) = got["/lens/detections"][k][1].detections
        hyp = det.results[0].hypothesis
        assert hyp.class_id == PROMPT and hyp.score == pytest.approx(want[k].score, abs=1e-6)
        assert det.bbox.center.position.x == pytest.approx((x1 + x2) / 2)
        assert det.bbox.center.position.y == pytest.approx((y1 + y2) / 2)
        assert (det.bbox.size_x, det.bbox.size_y) == (pytest.approx(x2 - x1), pytest.approx(y2 - y1))
        assert got["/lens/reasoning"][k][1].data == ANSWER
        assert got["/lens/reasoning"][k][0] == bag_time(i)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # no temporary folder left behind


def _pixel_bounds(model_dir):
    lens = json.loads((Path(model_dir) / "config.json").read_text())["lens"]
    return lens["min_pixels"], lens["max_pixels"]


def test_compressed_topic_with_a_corrupt_frame_and_overlay(tmp_path, ts, tiny_pipe):
    """CompressedImage (PNG and JPEG) in; a truncated frame is skipped and reported, the rest is segmented;
    an untrained model answers without a box, so the detection arrays are empty (but still stamped)."""
    src = write_bag(tmp_path / "in", ts, storage="sqlite3", n=4, compressed=True, bad_frames=(1,))
    out = tmp_path / "out"
    summary = process_bag(src, out, CAMERA, PROMPT, pipeline=tiny_pipe, overlay=True, storage="mcap", progress=False)
    assert (summary.frames, summary.segmented, summary.with_box) == (4, 3, 0)
    assert summary.image_type == "sensor_msgs/msg/CompressedImage" and summary.storage == "mcap"
    assert [f["frame"] for f in summary.failed] == [1] and "corrupt or truncated" in summary.failed[0]["error"]
    got, _, storage = read_bag(out, ts)
    assert storage == "mcap"
    assert {t: len(m) for t, m in got.items() if t.startswith("/lens")} == {
        "/lens/mask": 3,
        "/lens/masks": 3,
        "/lens/detections": 3,
        "/lens/reasoning": 3,
        "/lens/overlay": 3,
    }
    assert [m.header.stamp.sec for _, m, _ in got["/lens/detections"]] == [1000, 1002, 1003]
    assert all(m.detections == [] for _, m, _ in got["/lens/detections"])
    for _, overlay, _ in got["/lens/overlay"]:
        assert (overlay.encoding, overlay.height, overlay.width) == ("rgb8", H, W)
    masks = [image_to_array(m) for _, m, _ in got["/lens/mask"]]
    assert all(m.shape == (H, W) for m in masks)
    assert len(got[CAMERA]) == 4  # the corrupt frame is still copied


def test_bad_raw_frame_is_skipped(tmp_path, ts, tiny_pipe):
    src = write_bag(tmp_path / "in", ts, n=3, bad_frames=(0,))
    summary = process_bag(src, tmp_path / "out", CAMERA, PROMPT, pipeline=tiny_pipe, progress=False)
    assert summary.segmented == 2 and summary.failed[0]["frame"] == 0
    assert "unsupported image encoding 'yuv422'" in summary.failed[0]["error"]


def test_custom_message_types_are_copied_with_their_definition(tmp_path, ts, tiny_pipe):
    src = tmp_path / "in"
    custom = write_custom_bag(
        src,
        9,
        "mcap",
        "/reading",
        "my_robot_msgs/msg/Reading",
        "string label\nfloat64[] values\n",
        label="arm",
        values=np.array([1.5, 2.5]),
    )
    process_bag(src, tmp_path / "out", CAMERA, PROMPT, pipeline=tiny_pipe, progress=False)
    with Reader(src) as a, Reader(tmp_path / "out") as b:
        (ca,) = [c for c in a.connections if c.topic == "/reading"]
        (cb,) = [c for c in b.connections if c.topic == "/reading"]
        assert (cb.msgtype, cb.msgdef.data, cb.digest) == (ca.msgtype, ca.msgdef.data, ca.digest)
        (raw,) = [bytes(r) for c, _, r in b.messages() if c.topic == "/reading"]
    back = custom.deserialize_cdr(raw, "my_robot_msgs/msg/Reading")
    assert back.label == "arm" and back.values.tolist() == [1.5, 2.5]


def test_a_failure_mid_bag_leaves_no_output(tmp_path, ts, tiny_pipe):
    src = write_bag(tmp_path / "in", ts, n=3)
    out = tmp_path / "out"
    # a prompt longer than the pipeline accepts fails inside the model, after the writer has started
    strict = LensPipeline(tiny_pipe.model, tiny_pipe.processor, max_new_tokens=4, max_prompt_tokens=8)
    with pytest.raises(PromptError, match="this model accepts at most 8"):
        process_bag(src, out, CAMERA, PROMPT, pipeline=strict, progress=False)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in"]

    calls = []

    def interrupted_on_second_frame(rgb, prompt):  # the user presses Ctrl-C during the second frame
        calls.append(prompt)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return tiny_pipe(rgb, prompt)

    with pytest.raises(KeyboardInterrupt):
        process_bag(src, out, CAMERA, PROMPT, pipeline=interrupted_on_second_frame, progress=False)
    assert len(calls) == 2 and not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_input_errors_are_reported_before_loading_the_model(capsys, tmp_path, ts):
    src = write_bag(tmp_path / "in", ts, n=1)
    missing_model = tmp_path / "no-such-model"  # never loaded: every error below comes first

    def error(*args):
        code, out, err = run(capsys, *args, "--model", missing_model, "--device", "cpu")
        assert code == 1 and out == "" and len(err.strip().splitlines()) == 1, err
        return err

    base = ["--image-topic", CAMERA, "--prompt", PROMPT]
    assert f"input bag not found: {tmp_path / 'nope'}" in error(
        "--in", tmp_path / "nope", "--out", tmp_path / "o", *base
    )
    (tmp_path / "not-a-bag").mkdir()
    assert "is not a rosbag2 directory (no metadata.yaml)" in error(
        "--in", tmp_path / "not-a-bag", "--out", tmp_path / "o", *base
    )
    err = error("--in", src, "--out", tmp_path / "o", "--image-topic", "/camera/color", "--prompt", PROMPT)
    assert "topic '/camera/color' is not in" in err
    assert "its topics: /camera/image_raw (sensor_msgs/msg/Image), /chatter (std_msgs/msg/String)" in err
    err = error("--in", src, "--out", tmp_path / "o", "--image-topic", "/chatter", "--prompt", PROMPT)
    assert "topic /chatter has type std_msgs/msg/String; expected sensor_msgs/msg/Image or" in err
    assert "Image topics in the bag: /camera/image_raw" in err
    (tmp_path / "exists").mkdir()
    assert f"output {tmp_path / 'exists'} already exists" in error("--in", src, "--out", tmp_path / "exists", *base)
    assert "output folder does not exist" in error("--in", src, "--out", tmp_path / "a" / "b", *base)
    assert "--every must be >= 1, got 0" in error("--in", src, "--out", tmp_path / "o", *base, "--every", "0")
    assert "prompt is empty" in error("--in", src, "--out", tmp_path / "o", "--image-topic", CAMERA, "--prompt", "  ")
    assert not (tmp_path / "o").exists()


def _mcap_chunks(data: bytearray):
    """(offset of the CRC field, offset and length of the uncompressed records) of each chunk of an MCAP file
    written without compression (the MCAP record layout: opcode u8, length u64, then the chunk's start, end and
    uncompressed size u64, CRC u32, compression string, records length u64, records)."""
    position = 8
    while position < len(data) and data[position] not in (0x02, 0x0F):
        length = int.from_bytes(data[position + 1 : position + 9], "little")
        if data[position] == 0x06:
            content = position + 9
            name_length = int.from_bytes(data[content + 28 : content + 32], "little")
            assert name_length == 0  # uncompressed
            records = content + 32 + 8
            yield content + 24, records, int.from_bytes(data[records - 8 : records], "little")
        position += 9 + length


def _mcap_file(bag: Path) -> Path:
    return next(bag.glob("*.mcap"))


def _with_crcs(bag: Path, corrupt: bool = False) -> Path:
    """The bag's chunks given their CRC32 (as ROS 2's recorder writes them; rosbags' writer leaves 0), and with
    `corrupt` one byte of the first chunk's records flipped afterwards, as a damaged disk would."""
    path = _mcap_file(bag)
    data = bytearray(path.read_bytes())
    chunks = list(_mcap_chunks(data))
    for crc_at, records, length in chunks:
        data[crc_at : crc_at + 4] = zlib.crc32(data[records : records + length]).to_bytes(4, "little")
    if corrupt:
        _, records, length = chunks[0]
        data[records + length // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return bag


def _with_a_damaged_length(bag: Path) -> Path:
    path = _mcap_file(bag)
    data = bytearray(path.read_bytes())
    crc_at, _, _ = next(_mcap_chunks(data))
    data[crc_at - 24 - 8 : crc_at - 24] = (1 << 40).to_bytes(8, "little")  # the chunk record's length field
    path.write_bytes(bytes(data))
    return bag


# id -> (the input bag made from a clean one, exit code, text of the stderr line expected (an error when the code
# is 1, else a warning; None: no CRC warning))
BAG_CASES = {
    "chunk-crc-mismatch": (lambda b: _with_crcs(b, corrupt=True), 1, "in is corrupted: Chunk checksum mismatch."),
    "damaged-record-length": (
        _with_a_damaged_length,
        1,
        "claims 1099511627776 bytes, past the end of the file (truncated, or its length field was damaged)",
    ),
    "chunks-without-crc": (lambda b: b, 0, "1 of 1 chunk(s) carry no CRC (their writer did not compute one)"),
    "chunks-with-crc": (_with_crcs, 0, None),
}


@pytest.mark.parametrize("case", list(BAG_CASES))
def test_bag_chunk_crcs(case, capsys, tmp_path, ts, tiny_dir):
    """rosbags verifies a chunk's CRC as it reads it: a corrupted bag is refused with one line naming it (no output,
    the input untouched); a damaged record length is refused before the model loads; chunks without a CRC (as
    rosbags writes them) are processed with a warning that they cannot be checked."""
    make, want_code, expected = BAG_CASES[case]
    src = make(write_bag(tmp_path / "in", ts, n=3))
    before = file_states(src)
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys, "--in", src, "--out", out, "--image-topic", CAMERA, "--prompt", PROMPT, "--model", tiny_dir,
        "--device", "cpu", "--max-new-tokens", 2, "--no-progress",
    )  # fmt: skip
    assert code == want_code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(("lens bag: error: ", "warning: "))]
    if want_code == 1:
        assert len(lines) == 1 and lines[0].startswith("lens bag: error: ") and expected in lines[0], err
        assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no staging
    else:
        assert json.loads(stdout)["segmented"] == 3
        assert [line for line in lines if "CRC" in line] == (
            [f"warning: {_mcap_file(src)}: {expected}, so corrupted bytes in them cannot be detected"]
            if expected
            else []
        )
    assert file_states(src) == before


def test_output_topics_already_in_the_input_are_refused(tmp_path, ts, tiny_pipe):
    src = write_bag(tmp_path / "in", ts, n=1)
    once = process_bag(src, tmp_path / "once", CAMERA, PROMPT, pipeline=tiny_pipe, progress=False)
    assert once.segmented == 1
    with pytest.raises(BagError, match=r"input bag already has output topic\(s\) /lens/detections, /lens/mask"):
        process_bag(tmp_path / "once", tmp_path / "twice", CAMERA, PROMPT, pipeline=tiny_pipe, progress=False)
    again = process_bag(
        tmp_path / "once", tmp_path / "twice", CAMERA, PROMPT, pipeline=tiny_pipe, progress=False, out_prefix="/lens2"
    )
    assert again.topics["/lens2/mask"] == 1 and again.topics["/lens/mask"] == 1


def test_cli_help_lists_bag(capsys):
    with pytest.raises(SystemExit):
        main(["bag", "--help"])
    out = capsys.readouterr().out
    for option in ("--in", "--out", "--image-topic", "--prompt", "--every", "--model", "--device"):
        assert option in out


def _make_humble_style(path: Path) -> None:
    """Strip what Humble's rosbag2 does not record (sqlite3 schema 3, metadata version 5): no message definitions
    and no type hashes, as in most recordings made on Humble."""
    import sqlite3

    (db,) = path.glob("*.db3")
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM message_definitions")
        con.execute("UPDATE topics SET type_description_hash = ''")
        con.execute("UPDATE schema SET schema_version = 3")
    meta = yaml.safe_load((path / "metadata.yaml").read_text())
    info = meta["rosbag2_bagfile_information"]
    info["version"] = 5
    info.pop("ros_distro", None)
    for topic in info["topics_with_message_count"]:
        topic["topic_metadata"].pop("type_description_hash", None)
    (path / "metadata.yaml").write_text(yaml.safe_dump(meta))


def test_humble_bag_without_type_definitions(tmp_path, ts, tiny_pipe):
    src = tmp_path / "in"
    write_custom_bag(src, 8, "sqlite3", "/tag", "my_robot_msgs/msg/Tag", "string label\n", label="x")
    _make_humble_style(src)
    with Reader(src) as reader:
        assert all(c.digest == "" and not c.msgdef.data for c in reader.connections)
    summary = process_bag(src, tmp_path / "out", CAMERA, PROMPT, pipeline=tiny_pipe, progress=False)
    # standard types get their definition and hash from the typestore; a custom type without one cannot be written
    assert summary.segmented == 1 and summary.skipped_topics == ["/tag"] and summary.storage == "sqlite3"
    got, types, _ = read_bag(tmp_path / "out", ts)
    assert "/tag" not in types and len(got[CAMERA]) == 1 and len(got["/lens/mask"]) == 1
    with Reader(tmp_path / "out") as reader:
        (conn,) = [c for c in reader.connections if c.topic == CAMERA]
        assert conn.digest == ts.hash_rihs01("sensor_msgs/msg/Image") and "uint8[] data" in conn.msgdef.data


def test_lens_bag_track_writes_every_frame(capsys, tmp_path, ts, box_model_dir):
    """--track: LENS on frame 0 (and when the target is lost), SAM2 tracking on the others; every frame gets a mask
    and detections with its own header, reasoning only where LENS ran; the masks are the library's."""
    from lens_model.model.sam_memory import load_sam_memory
    from lens_model.tracking.track_video import ReasonAndTrack
    from lens_model.tracking.tracker import StreamingTracker

    n = 5
    src = write_bag(tmp_path / "in", ts, n=n)
    out = tmp_path / "out"
    code, stdout, err = run(
        capsys, "--in", src, "--out", out, "--image-topic", CAMERA, "--prompt", PROMPT, "--track",
        "--model", box_model_dir, "--device", "cpu", "--max-new-tokens", "24",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["track"] and (summary["frames"], summary["segmented"]) == (n, n)
    got, _, _ = read_bag(out, ts)
    assert len(got["/lens/mask"]) == len(got["/lens/detections"]) == n
    assert len(got["/lens/reasoning"]) == summary["lens_queries"] >= 1
    assert all(msg.data == ANSWER for _, msg, _ in got["/lens/reasoning"])

    direct = LensPipeline.from_pretrained(str(box_model_dir), device="cpu", max_new_tokens=24)
    memory = load_sam_memory(direct.config.sam, model_dir=box_model_dir)
    runner = ReasonAndTrack(direct, StreamingTracker.from_lens_model(direct.model, memory), PROMPT)
    want = [runner.step(frame(i), bag_time(i) * 1e-9) for i in range(n)]
    assert [w.source for w in want][:2] == ["lens", "tracker"]
    assert sum(w.source == "lens" for w in want) == summary["lens_queries"]
    for i in range(n):
        timestamp, mask, _ = got["/lens/mask"][i]
        assert timestamp == bag_time(i)
        assert (mask.header.stamp.sec, mask.header.stamp.nanosec) == (1000 + i, 1000 * i + 7)
        assert np.array_equal(image_to_array(mask) == 255, want[i].mask)
        assert len(got["/lens/detections"][i][1].detections) == (want[i].targets[0].box is not None)


def test_lens_bag_track_needs_memory_weights(capsys, tmp_path, ts, tiny_dir):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model, ignore=shutil.ignore_patterns("sam2_memory.safetensors"))
    src = write_bag(tmp_path / "in", ts, n=1)
    code, _, err = run(
        capsys, "--in", src, "--out", tmp_path / "out", "--image-topic", CAMERA, "--prompt", PROMPT, "--track",
        "--model", model,
    )  # fmt: skip
    assert code != 0 and "--sam-memory-checkpoint sam2_hiera_tiny.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
