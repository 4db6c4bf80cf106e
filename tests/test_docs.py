"""The README and docs/ as a user follows them: every `lens` command they show names a subcommand and options that
the parser has, every page they link exists, and the code blocks marked as CPU examples run as written (in a
scratch folder, with `lens` and `python` the ones under test). The README's first command is run by
tests/test_demo_model.py; the ROS pages' tables and workspace commands by tests/test_ros_params_launch.py and
tests/test_ros_workspace.py."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from lens_cli import build_parser

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CPU_EXAMPLE = "<!-- CPU example: tests/test_docs.py runs it as written -->"
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`(lens [^`]+?)`(?!`)")  # inline code may wrap onto the next line
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _page_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def _command_lines(block: str) -> list[str]:
    """A code block's commands, one per line: backslash continuations joined, and so are the indented continuation
    lines of a synopsis (`lens segment --model M ...` followed by `             [--device ...]`)."""
    lines: list[str] = []
    for raw in block.splitlines():
        if lines and (lines[-1].endswith("\\") or (raw.startswith(" ") and raw.strip().startswith("["))):
            lines[-1] = lines[-1].rstrip("\\").rstrip() + " " + raw.strip()
        elif raw.strip():
            lines.append(raw.strip())
    return lines


def lens_invocations(text: str) -> list[str]:
    """Every `lens ...` command in a page: in its code blocks (also `.venv/bin/lens`, `python -m lens_cli`,
    `torchrun ... -m lens_cli`), and in inline code that starts with `lens `. Comments and other commands of the
    same line (`&&`, `;`) are split off."""
    found = []
    inline = [" ".join(span.split()) for span in INLINE.findall(FENCE.sub("", text)) if "\n\n" not in span]
    sources = [line for block in FENCE.findall(text) for line in _command_lines(block)] + inline
    for line in sources:
        for segment in re.split(r"&&|;", line.split(" # ", 1)[0].split("  #", 1)[0]):
            words = segment.split()
            while words and ENV_ASSIGNMENT.match(words[0]):
                words = words[1:]
            if words and (words[0] == "lens" or words[0].endswith("/lens")):
                found.append(" ".join(words[1:]))
            elif "lens_cli" in words and words.index("lens_cli") > 0 and words[words.index("lens_cli") - 1] == "-m":
                found.append(" ".join(words[words.index("lens_cli") + 1 :]))
    return found


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def unknown_in(invocation: str, subcommands: dict[str, argparse.ArgumentParser]) -> list[str]:
    """What of `invocation` (the words after `lens`) the parser does not know: the subcommand, or options."""
    words = invocation.split()
    if not words or words[0].startswith("-") or words[0].isupper() or words[0] == "...":
        return []  # `lens --help`, `lens COMMAND --help`, `lens ...`
    names = words[0].split("|")  # a synopsis may name two: `lens segment|track --backend ...`
    unknown = [f"subcommand {name!r}" for name in names if name not in subcommands]
    for name in names:
        if name in subcommands:
            options = subcommands[name]._option_string_actions
            unknown += [
                f"{name} {option}"
                for option in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", invocation)
                if option not in options
            ]
    return unknown


def test_invocations_are_found_in_blocks_synopses_and_inline_code():
    text = (
        "Run `lens segment --image a.png --prompt x --out-mask m.png` or `lens`.\n"
        "```bash\nHF_HUB_OFFLINE=1 .venv/bin/lens make-tiny --out d && lens segment --model d \\\n"
        "    --device cpu   # a comment --not-an-option\ntorchrun --nproc_per_node 2 -m lens_cli eval --limit 3\n"
        "git clone <repo> lens\n```\n"
        "```\nlens track --video V --prompt P --out-dir D\n           [--reason-every K]\n```\n"
    )
    assert lens_invocations(text) == [
        "make-tiny --out d",
        "segment --model d --device cpu",
        "eval --limit 3",
        "track --video V --prompt P --out-dir D [--reason-every K]",
        "segment --image a.png --prompt x --out-mask m.png",
    ]
    subcommands = _subcommands()
    assert unknown_in("segment --image a --prompt b --out-mask m.png", subcommands) == []
    assert unknown_in("segment --imag a", subcommands) == ["segment --imag"]
    assert unknown_in("segmnt --image a", subcommands) == ["subcommand 'segmnt'"]
    assert unknown_in("segment|track --backend onnxruntime --video v", subcommands) == ["segment --video"]


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_documented_lens_command_exists_with_its_options(page):
    invocations = lens_invocations(page.read_text())
    subcommands = _subcommands()
    problems = [f"`lens {inv}`: {', '.join(unknown_in(inv, subcommands))}" for inv in invocations]
    assert [p for p in problems if not p.endswith(": ")] == []


def test_the_pages_show_every_lens_subcommand():
    shown = {inv.split()[0] for page in PAGES for inv in lens_invocations(page.read_text()) if inv}
    assert set(_subcommands()) <= {name for names in shown for name in names.split("|")}


TRAINING = re.compile(r"(?:-m|--module)\s+training\.(align|grpo|demo)\b(.*)")


def training_invocations(text: str) -> list[tuple[str, str]]:
    """(stage, the words after it) for every `python -m training.X`, `torchrun ... -m training.X` and
    `deepspeed ... --module training.X` in a page's code blocks."""
    found = []
    for block in FENCE.findall(text):
        for line in _command_lines(block):
            for segment in re.split(r"&&|;", line.split(" # ", 1)[0].split("  #", 1)[0]):
                match = TRAINING.search(segment)
                if match:
                    found.append((match.group(1), match.group(2).strip()))
    return found


def _help_options(module: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", proc.stdout))


def test_documented_training_commands_use_options_and_config_keys_that_exist():
    """`--flags` against each entry point's --help; `key=value` overrides against the stage's config dataclass."""
    import dataclasses

    from training.config import AlignConfig, GRPOConfig

    keys = {
        "align": {f.name for f in dataclasses.fields(AlignConfig)},
        "grpo": {f.name for f in dataclasses.fields(GRPOConfig)},
    }
    options = {stage: _help_options(f"training.{stage}") for stage in ("align", "grpo", "demo")}
    found, problems = 0, []
    for page in PAGES:
        for stage, rest in training_invocations(page.read_text()):
            found += 1
            words = shlex.split(rest)
            problems += [f"{stage} {w}" for w in words if w.startswith("--") and w.split("=")[0] not in options[stage]]
            overrides = [w.split("=", 1)[0].split(".")[0] for w in words if "=" in w and not w.startswith("-")]
            problems += [f"{stage} {k}=" for k in overrides if k not in keys.get(stage, set())]
    assert found >= 8 and problems == []


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_links_between_pages_resolve(page):
    targets = re.findall(r"\]\((?!https?://)([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    targets += re.findall(r'<img src="([^"]+)"', page.read_text())
    assert [t for t in targets if not (page.parent / t).exists()] == []


def test_the_readme_is_a_front_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for page in ("docs/ros.md", "docs/cli.md", "docs/training.md", "docs/export.md", "docs/evaluation.md"):
        assert f"]({page})" in text, page


# --- the CPU examples, run as written ---


def cpu_examples() -> list[tuple[str, str]]:
    """(page, block) for every code block right after the CPU-example marker."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for part in text.split(CPU_EXAMPLE)[1:]:
            match = FENCE.match(part.lstrip("\n"))
            assert match is not None, f"{_page_id(page)}: the CPU-example marker must be followed by a code block"
            out.append((_page_id(page), match.group(1)))
    return out


def _example_params():
    return [pytest.param(page, block, id=f"{page}-{i}") for i, (page, block) in enumerate(cpu_examples())]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder laid out like the repository root for the examples (its assets/ and training/ linked, runs/ and
    datasets/ its own), with `lens` and `python` on PATH running this checkout."""
    root = tmp_path_factory.mktemp("docs-examples")
    for name in ("assets", "training", "scripts"):
        (root / name).symlink_to(REPO / name)
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    for name, command in (("lens", f'"{sys.executable}" -m lens_cli'), ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')  # a script: a venv's python needs its path
        (bin_dir / name).chmod(0o755)
    return root


def _run_block(block: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PATH=f"{cwd / '.bin'}:{os.environ['PATH']}",
        PYTHONPATH=str(REPO),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="2",
    )
    script = "set -e\n" + "\n".join(_command_lines(block))
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_every_page_with_runnable_commands_marks_some():
    pages = {page for page, _ in cpu_examples()}
    assert {"docs/cli.md", "docs/evaluation.md", "docs/export.md", "docs/training.md"} <= pages


@pytest.mark.parametrize("page, block", _example_params())
def test_cpu_example_runs_as_written(page, block, scratch):
    proc = _run_block(block, scratch)
    assert proc.returncode == 0, f"{page}:\n{block}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    for line in _command_lines(block):
        for word in shlex.split(line.split(" # ", 1)[0]):
            if re.fullmatch(r"(runs|datasets)/[\w./-]*\.(png|json)", word):
                assert (scratch / word).is_file(), f"{page}: {line} did not write {word}"
