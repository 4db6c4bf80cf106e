#!/usr/bin/env bash
# Create ./.venv and install lens with everything it needs (CPU or GPU machine, Python >= 3.10).
# Used by the README's commands and by CI. Re-running it is cheap: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
export PIP_PROGRESS_BAR=off PIP_DISABLE_PIP_VERSION_CHECK=1
PIP=(.venv/bin/python -m pip -q)

"${PIP[@]}" install "pip==25.2" setuptools wheel
# torch/torchvision pinned to a pair that exists as a wheel for x86_64 and aarch64 (sam2 needs torchvision).
# On x86_64 the PyPI wheel of torch 2.14.1 is the CUDA 13 build (+cu130, about 6 GB installed with its NVIDIA
# libraries); it runs on CPU-only machines too, it is just large. For a CPU-only build (about 1 GB) take the pair
# from PyTorch's CPU wheel index, e.g.
#   LENS_TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu" bash scripts/setup_env.sh
# LENS_TORCH_SPEC is passed to pip as it is (any other build works the same way, e.g. another CUDA version).
if [ "$(uname -m)" = "aarch64" ]; then default_torch="torch==2.9.1 torchvision==0.24.1"; else default_torch="torch==2.14.1 torchvision==0.29.1"; fi
# shellcheck disable=SC2086
"${PIP[@]}" install ${LENS_TORCH_SPEC:-$default_torch}
# sam2 ships as an sdist that imports torch while building: build it against the torch above, and
# without its optional CUDA extension (only used for video post-processing, which LENS does not call).
SAM2_BUILD_CUDA=0 "${PIP[@]}" install --no-build-isolation "sam2>=1.1.0"
# sam2 1.1.0 also installs its own training code as a top-level `training` package, which shadows this
# project's `training` (python -m training.align) outside the repository root. LENS never uses it: remove it.
.venv/bin/python - <<'PY'
import importlib.metadata as md, pathlib, shutil
dist = md.distribution("sam2")
if any(str(f) == "training/__init__.py" for f in dist.files or []):
    stray = pathlib.Path(dist.locate_file("training"))
    if stray.is_dir():
        shutil.rmtree(stray)
        print(f"removed sam2's top-level 'training' package ({stray}); it would shadow lens's training package")
PY
# DeepSpeed's setup.py imports torch: build it against the torch above (no isolated build env pulling another
# torch), without pre-compiled ops (they are JIT-built on first use on GPU machines).
DS_BUILD_OPS=0 "${PIP[@]}" install --no-build-isolation "deepspeed>=0.16"
# demo: gradio for `lens demo` (the web page; about 200 MB)
"${PIP[@]}" install -e ".[test,train,demo]"
echo "lens installed in $(pwd)/.venv"
