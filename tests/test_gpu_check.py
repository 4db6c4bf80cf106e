"""The CPU-side parts of benchmarks/gpu_check.py (its GPU parts run on a GPU machine): the table, the argument
checks, the LENS-3B shape on the meta device, and that the wheels it carries are the versions tested here."""

import importlib.metadata
import re
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


def run_script(*args: str) -> subprocess.CompletedProcess:
    script = str(REPO / "benchmarks" / "gpu_check.py")
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=REPO)


def test_unknown_parts_are_refused():
    proc = run_script("--parts", "demo,speed")
    assert proc.returncode == 2 and "--parts: unknown ['speed']; choose among tests,demo,lens3b" in proc.stderr


def test_the_arguments(capsys):
    full = gpu_check.parse_args([])
    assert full.parts == ["tests", "demo", "lens3b", "tracking", "grpo"] and full.new_tokens == 256
    smoke = gpu_check.parse_args(["--smoke"])  # what a CPU runs: no GPU part asked for
    assert smoke.parts == ["demo", "lens3b"] and (smoke.new_tokens, smoke.tracking_frames) == (4, 2)
    assert gpu_check.parse_args(["--smoke", "--parts", "grpo,tests"]).parts == ["grpo", "tests"]  # explicit wins
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(["--parts", ","])
    assert exit_.value.code == 2 and "--parts: none given" in capsys.readouterr().err


def test_an_empty_wheel_folder_is_refused_before_anything_runs(tmp_path):
    proc = run_script("--wheels", str(tmp_path), "--parts", "demo")
    assert proc.returncode == 1 and f"--wheels {tmp_path}: no .whl files there" in proc.stderr
    assert "gpu_check on" not in proc.stdout  # nothing ran


def test_the_wheels_to_carry_are_listed_with_their_sizes():
    """The docstring is what a user reads before carrying the folder: every wheel with its size, and the total."""
    doc = " ".join(gpu_check.__doc__.split())
    sizes = []
    for requirement in gpu_check.WHEELS:
        name, version = requirement.split("==")
        size = re.search(rf"{re.escape(name)} {re.escape(version)} ([\d.]+) MB", doc)
        assert size, f"{requirement} is not listed with its size in gpu_check's docstring"
        sizes.append(float(size.group(1)))
    total = float(re.search(r"([\d.]+) MB in all", doc).group(1))
    assert total == pytest.approx(sum(sizes), abs=0.1)
    assert "TensorRT (GBs)" in doc  # not carried: its engine tests stay for a GPU machine with TensorRT


def test_lens_3b_shape_on_the_meta_device():
    row = gpu_check.lens_3b_on_meta()
    assert row.measured.startswith("MLLM ") and float(row.measured.split()[1]) == pytest.approx(3755.6, abs=1.5)


def test_the_carried_wheels_are_the_tested_versions():
    for requirement in gpu_check.WHEELS:
        name, version = requirement.split("==")
        assert importlib.metadata.version(name) == version, requirement
    assert set(gpu_check.PAPER_LATENCY) == {"MLLM", "context query", "connector", "SAM2"}


def test_unmet_dependencies_of_carried_wheels_are_named():
    """--no-deps installs: what a carried wheel needs and the machine lacks is named, version and all."""
    numpy = importlib.metadata.version("numpy")
    unmet = gpu_check.unmet_requirements(
        ["numpy>=1.0", "numpy>=999", "no-such-package-here>=1", 'boto3; extra == "aws"', 'typing; python_version < "3"']
    )
    assert unmet == [f"numpy>=999: {numpy} installed", "no-such-package-here>=1: not installed"]
    for requirement in gpu_check.WHEELS:  # here, where they were tested, every carried wheel's dependencies are met
        name = requirement.split("==")[0]
        assert gpu_check.unmet_requirements(importlib.metadata.requires(name) or []) == [], name
