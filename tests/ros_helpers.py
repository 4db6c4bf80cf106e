"""Shared by the lens_ros tests: rosbags message classes (vision_msgs and lens_interfaces registered), so that
the node's messages are built and serialised as real ROS 2 messages without a ROS installation; WAV bytes and a
tiny random-weight Whisper for the spoken-command tests."""

import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ci_tools import skip_or_fail


def lens_test_typestore():
    """A rosbags Humble typestore with vision_msgs and every lens_interfaces type; `store.lens_names` maps the
    rosidl name of each service/action part ("lens_interfaces/srv/Segment_Request") to its rosbags name."""
    from rosbags.typesys import get_types_from_msg

    from lens_ros.bag import lens_typestore
    from lens_ros.interfaces import lens_interfaces_definitions

    store = lens_typestore()
    types, store.lens_names = {}, {}
    for name, text in lens_interfaces_definitions().items():
        found = get_types_from_msg(text, name)
        # rosbags files service/action parts under a msg/ level ("lens_interfaces/srv/msg/Segment_Request")
        store.lens_names[name] = next(key for key in found if key.endswith(name.rsplit("/", 1)[1]))
        types.update(found)
    store.register(types)
    return store


def header(store, sec=100, nanosec=0, frame="camera_optical"):
    t = store.types
    return t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame)


def cdr(store, msg, typename):
    """Serialise and deserialise through CDR, as a bag or a DDS wire would carry the message."""
    return store.deserialize_cdr(bytes(store.serialize_cdr(msg, typename)), typename)


def image_msg(store, rgb: np.ndarray, sec=100, nanosec=0, frame="camera_optical", encoding="rgb8"):
    from lens_ros.messages import array_to_image

    return array_to_image(rgb, encoding, header(store, sec, nanosec, frame), store.types)


# --- audio ---


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono float audio -> a 16-bit PCM WAV file's bytes (what audio_capture's `wave` format starts with)."""
    import wave

    pcm = (np.clip(np.asarray(audio, dtype=np.float64), -1, 1) * 32767).round().astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


_WHISPER_SPECIAL = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|de|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
_CORPUS = [
    "pick up the red cup",
    "segment the mug left of the laptop",
    "the astronaut's helmet",
    "something to cut bread with",
    "the green apple on the table",
]


def make_tiny_whisper(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random-weight multilingual Whisper (tokenizer, feature extractor, model, generation config) saved to
    `out_dir`: loads with `WhisperTranscriber.from_pretrained`. Its transcripts are meaningless; no download."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        _CORPUS * 4,
        trainer=trainers.BpeTrainer(
            vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        ),
    )
    spec = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["merges"]]
    tokenizer = WhisperTokenizer(vocab=spec["vocab"], merges=merges, additional_special_tokens=_WHISPER_SPECIAL[1:])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _WHISPER_SPECIAL}
    eot, sot = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        # random weights: keep the special tokens out of the transcript so that it holds words
        begin_suppress_tokens=[eot],
        suppress_tokens=sorted(set(ids.values()) - {eot}),
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# --- the rclpy node (tests/test_ros_node*.py): where ROS 2 is installed ---


def _missing_ros() -> list[str]:
    missing = [m for m in ("rclpy", "sensor_msgs", "vision_msgs") if importlib.util.find_spec(m) is None]
    try:  # the source folder lens_interfaces/ imports as an empty namespace package: ask for the generated class
        _ = importlib.import_module("lens_interfaces.srv").Segment
    except (ImportError, AttributeError):
        missing.append("lens_interfaces")
    return missing


MISSING_ROS = _missing_ros()
ROS_SETUP = (
    "bash scripts/setup_ros_wheels.sh (ROS 2 Jazzy from PyPI into .venv; .ci/run does), or source "
    "/opt/ros/<distro>/setup.bash and the workspace's install/setup.bash"
)


def require_ros() -> None:
    """Skip the calling test without rclpy and the node's messages, or fail it under CI=true, where .ci/run has
    installed them (scripts/setup_ros_wheels.sh)."""
    if MISSING_ROS:
        skip_or_fail(f"needs ROS 2 with lens_interfaces built ({', '.join(MISSING_ROS)} not importable): {ROS_SETUP}")


# on a test module or function: runs require_ros first (the fixture `ros_installed` is in conftest.py)
needs_ros = pytest.mark.usefixtures("ros_installed")


def installed_ros_distro() -> str | None:
    """The ROS 2 distribution rclpy comes from: the sourced one (ROS_DISTRO), else Jazzy when its PyPI wheels are
    installed (scripts/setup_ros_wheels.sh), else None."""
    if os.environ.get("ROS_DISTRO"):
        return os.environ["ROS_DISTRO"]
    try:
        importlib.metadata.distribution("ros-jazzy-rclpy")
    except importlib.metadata.PackageNotFoundError:
        return None
    return "jazzy"


def share_dir(package: str) -> Path:
    """share/<package> of the ROS prefix a message package is installed in (an apt or colcon install, or the venv
    with the wheels), found from its Python module: <prefix>/lib/pythonX.Y/site-packages/<package>/__init__.py."""
    module = importlib.util.find_spec(package)
    if module is None or module.origin is None:
        raise ModuleNotFoundError(f"{package} is not installed as a ROS message package")
    return Path(module.origin).parents[4] / "share" / package


def installed_type_hashes(package: str) -> dict[str, str]:
    """Type name -> RIHS01 hash of every type in the type descriptions (msg/srv/action *.json) that rosidl
    generated when `package` was built (Iron and later), including the types they nest."""
    hashes = {}
    for path in sorted(share_dir(package).glob("*/*.json")):
        for entry in json.loads(path.read_text())["type_hashes"]:
            hashes[entry["type_name"]] = entry["hash_string"]
    return hashes


def lens_node_command(*args: str) -> list[str]:
    """`lens_node ARGS` as users start it: the console script beside this interpreter (pip install -e .), or the
    module it runs."""
    script = shutil.which("lens_node", path=str(Path(sys.executable).parent))
    return [*([script] if script else [sys.executable, "-m", "lens_ros.node"]), *args]


def wait_for(predicate, timeout=60.0) -> bool:
    """Poll `predicate` every 50 ms until it is true (-> True) or `timeout` seconds pass (-> False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def running_node(model_dir, client_name: str, **parameters):
    """LensNode on the tiny model (CPU, no audio, 8 new tokens, frames valid 30 s; `parameters` added), configured,
    activated and spun with a client node on a multi-threaded executor -> (node, client); shut down after."""
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from lens_ros.node import LensNode

    values = dict(model=str(model_dir), device="cpu", audio_enabled=False, max_new_tokens=8, max_frame_age_s=30.0)
    values.update(parameters)
    rclpy.init()
    node = LensNode(parameter_overrides=[Parameter(name, value=value) for name, value in values.items()])
    client = rclpy.create_node(client_name)
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    executor.add_node(client)
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        yield node, client
    finally:
        executor.shutdown()
        node.stop_io()
        node.destroy_node()
        client.destroy_node()
        rclpy.shutdown()
