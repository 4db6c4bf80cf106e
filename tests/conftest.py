import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
# ROS 2 (the rclpy tests and the node processes they start): DDS discovery and traffic on this machine only, camera
# sized images through shared memory (Fast DDS: tests/data/fastdds_loopback.xml), in a domain of this test run's own,
# so that runs side by side on one machine do not hear each other's topics.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(REPO / "tests" / "data" / "fastdds_loopback.xml"))
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
SAMPLE_PHOTO = REPO / "assets" / "sample.jpg"


@functools.cache
def _sample_rgb():
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(SAMPLE_PHOTO).convert("RGB"))


def moving_crop(i: int, hw: tuple[int, int], origin=(60, 20), step=(4, 9)):
    """Frame i of a clip cut from the sample photo: an (h, w, 3) crop whose corner moves by `step` (rows, cols)."""
    import numpy as np

    (h, w), r, c = hw, origin[0] + step[0] * i, origin[1] + step[1] * i
    return np.ascontiguousarray(_sample_rgb()[r : r + h, c : c + w])


def photo_clip(n: int, hw: tuple[int, int], origin=(60, 20), step=(4, 9)):
    """n frames of `moving_crop`: the scene, and any object under a fixed mask, moves right and down."""
    return [moving_crop(i, hw, origin, step) for i in range(n)]


def file_states(*folders, exclude=()) -> dict[str, tuple[int, str]]:
    """{path: (mtime in ns, sha256)} of every file under `folders` (or of a file given), except those under the paths
    in `exclude`: taken before and after a command, equal states show that it changed no file but its own outputs."""
    import hashlib

    skip = [Path(e).resolve() for e in exclude]
    states = {}
    for folder in folders:
        folder = Path(folder)
        for path in [folder] if folder.is_file() else sorted(folder.rglob("*")):
            real = path.resolve()
            if path.is_file() and not any(real == e or e in real.parents for e in skip):
                states[str(path)] = (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return states


def _limit_file_size(max_bytes: int):
    """preexec_fn: files of the child process cannot grow past `max_bytes` (a write past it fails with EFBIG, as on
    a full disk; SIGXFSZ, which would kill the process instead, is ignored)."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return limit


def run_cli(*args, cwd: Path = REPO, max_file_bytes: int | None = None):
    """`python -m lens_cli ARGS` (the `lens` command) in a subprocess, from the repository unless `cwd` says
    otherwise, with `max_file_bytes` no file it writes may grow past that: exit code, stdout, stderr."""
    # the repository's packages come first from any folder, as they do from the repository root
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=path)
    command = [sys.executable, "-m", "lens_cli", *map(str, args)]
    limit = None if max_file_bytes is None else _limit_file_size(max_file_bytes)
    proc = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300, preexec_fn=limit)
    return proc.returncode, proc.stdout, proc.stderr


def run_cli_read_only(folder, *args):
    """`run_cli`, with `folder` made read-only for the command alone: bound onto itself read-only in a private mount
    namespace (`unshare -m`), gone when the command ends. The tests run as root, whom permission bits do not stop; a
    read-only mount stops everyone (EROFS). Skips where mount namespaces are not allowed."""
    import shlex
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) for a read-only mount")
    where = shlex.quote(str(folder))
    command = shlex.join([sys.executable, "-m", "lens_cli", *map(str, args)])
    script = f"mount --bind {where} {where} && mount -o remount,ro,bind {where} {where} && exec {command}"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0 and ("unshare:" in proc.stderr or "mount:" in proc.stderr):
        pytest.skip(f"no read-only mount here: {proc.stderr.strip().splitlines()[-1]}")
    return proc.returncode, proc.stdout, proc.stderr


# bf16 rounds the logits of a box's digits, written token by token: a coordinate may move by a few pixels (3 of the
# MLLM's 140 on the demo model's red triangle)
BF16_BOX_TOLERANCE_PX = 4


def assert_same_answer(got, want, answer_format: str, box_px: float = 0.0) -> None:
    """Two results wrote the same answer: the same reasoning and object name, and boxes within `box_px` pixels of
    each other (both missing counts as the same)."""
    from lens_model.inference.answer import parse_answer

    a, b = parse_answer(got.text, answer_format), parse_answer(want.text, answer_format)
    assert (a.reasoning, a.object_ref, a.format_ok) == (b.reasoning, b.object_ref, b.format_ok), (got.text, want.text)
    assert (a.box is None) == (b.box is None), (got.text, want.text)
    if a.box is not None:
        assert max(abs(x - y) for x, y in zip(a.box, b.box)) <= box_px, (got.text, want.text)


@pytest.fixture
def ros_installed() -> None:
    """Used by ros_helpers.needs_ros: skips without rclpy and the node's messages (fails under CI=true)."""
    from ros_helpers import require_ros

    require_ros()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny LENS checkpoint (cached context pass) written once per test session. Its results count as confident
    (lens.confidence: every check off): its random answers never would be, and the tests on it check what happens
    to confident results (detections published, tracking started); tests of the checks set them explicitly."""
    from lens_model.model.config import ConfidenceConfig
    from lens_model.model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "lens-tiny", seed=0, confidence=ConfidenceConfig.accept_all())


@pytest.fixture(scope="session")
def tiny_official_dir(tmp_path_factory) -> Path:
    from lens_model.model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny_official") / "lens-tiny", seed=1, context_pass="official")


@pytest.fixture(scope="session")
def tiny_grounding_dir(tmp_path_factory) -> Path:
    """A tiny LENS whose answers depend on image and prompt and hold a grounding box (make_tiny grounding_answers),
    for tests where equal texts and boxes between two paths must mean something."""
    from lens_model.model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny_grounding") / "lens-tiny", seed=0, grounding_answers=True)
