"""Benchmarks that cannot rot: every script in benchmarks/ runs once with its smallest arguments (`--smoke`) and
exits 0, so a change that breaks one fails here, not at its next real run. Their figures are not checked: timings
belong in benchmarks/README.md, never in a test; the scripts' own parity checks (exit status 1) are."""

import os
import subprocess
import sys
import time

import pytest
from conftest import REPO

SCRIPTS = sorted(p.name for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def test_every_benchmark_is_smoke_tested():
    """SCRIPTS is discovered, so a new script joins the smoke pass by existing; it must also parse its arguments
    with `parse_with_smoke`, else `--smoke` would be refused (argparse) or ignored (a full-size run)."""
    assert {"context_pass.py", "gpu_check.py", "grpo_step.py", "sam_backends.py", "tracking.py"} <= set(SCRIPTS)
    without = [s for s in SCRIPTS if "parse_with_smoke(" not in (REPO / "benchmarks" / s).read_text()]
    assert not without, f"{without}: parse arguments with benchmarks/_smoke.py's parse_with_smoke (--smoke)"


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_smoke_run(script):
    # The checkout's packages, not an installed copy: a script's directory, not the repository, is on its sys.path.
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--smoke"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=900,
    )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    assert proc.returncode == 0, (
        f"{script} --smoke exited {proc.returncode} after {time.perf_counter() - start:.0f} s:\n{tail}"
    )


def test_smoke_arguments_must_be_options():
    """A renamed option fails the smoke pass loudly instead of running the script at full size."""
    import argparse

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from _smoke import parse_with_smoke
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    parser = argparse.ArgumentParser(prog="demo")
    parser.add_argument("--steps", type=int, default=800)
    assert parse_with_smoke(parser, {"steps": 2}, ["--smoke"]).steps == 2
    assert parse_with_smoke(argparse.ArgumentParser(), {}, []).smoke is False
    parser = argparse.ArgumentParser(prog="demo")
    parser.add_argument("--steps", type=int, default=800)
    assert parse_with_smoke(parser, {"steps": 2}, ["--smoke", "--steps", "5"]).steps == 5  # explicit wins
    parser = argparse.ArgumentParser(prog="demo")
    with pytest.raises(ValueError, match=r"\['step'\] are not options of demo"):
        parse_with_smoke(parser, {"step": 2}, ["--smoke"])
