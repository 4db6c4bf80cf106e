"""The CPU-side parts of benchmarks/gpu_check.py (its GPU parts run on a GPU machine): the table, the argument
checks, the LENS-3B shape on the meta device, and that the wheels it carries are the versions tested here."""

import importlib.metadata
import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

sys.path.remove(str(REPO / "benchmarks"))


def test_the_table():
    rows = [
        gpu_check.Row("tracking", "61.0 masks/s", ">= 60", "ok"),
        gpu_check.Row("LENS-3B shape: MLLM", "1.800 s", "1.5 s", "1.20x the paper's"),
    ]
    table = gpu_check.render_table(rows, 412.4).splitlines()
    assert table[0] == "| part | measured | goal / paper | verdict |"
    assert table[2] == "| tracking | 61.0 masks/s | >= 60 | ok |"
    assert table[-1] == "| total | 412 s | <= 600 s | within budget |"
    assert gpu_check.render_table([], 601).splitlines()[-1].endswith("OVER budget |")


def test_unknown_parts_are_refused():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--parts", "demo,speed"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 2 and "--parts: unknown ['speed']" in proc.stderr


def test_lens_3b_shape_on_the_meta_device():
    row = gpu_check.lens_3b_on_meta()
    assert row.measured.startswith("MLLM ") and float(row.measured.split()[1]) == pytest.approx(3755.6, abs=1.5)


def test_the_carried_wheels_are_the_tested_versions():
    for requirement in gpu_check.WHEELS:
        name, version = requirement.split("==")
        assert importlib.metadata.version(name) == version, requirement
    assert set(gpu_check.PAPER_LATENCY) == {"MLLM", "context query", "connector", "SAM2"}
