import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLE_PHOTO = REPO / "assets" / "sample.jpg"


def run_cli(*args):
    """`python -m lens_cli ARGS` (the `lens` command) in a subprocess from the repository: exit code, stdout, stderr."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "lens_cli", *map(str, args)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny LENS checkpoint (cached context pass) written once per test session."""
    from lens_model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny") / "lens-tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_official_dir(tmp_path_factory) -> Path:
    from lens_model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny_official") / "lens-tiny", seed=1, context_pass="official")


@pytest.fixture(scope="session")
def tiny_grounding_dir(tmp_path_factory) -> Path:
    """A tiny LENS whose answers depend on image and prompt and hold a grounding box (make_tiny grounding_answers),
    for tests where equal texts and boxes between two paths must mean something."""
    from lens_model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny_grounding") / "lens-tiny", seed=0, grounding_answers=True)
