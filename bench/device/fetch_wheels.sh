#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before a GPU run: downloads into .whl/ the Python 3.12 wheels
# that the lent GPU machine lacks. Its image already has torch, torchvision, transformers,
# accelerate, safetensors, huggingface-hub, pillow, numpy, scipy, psutil, nvidia-ml-py, einops
# (see /work/.library/device/KINDS.md); bench/gpu_check.py and bench/gpu_speed.py need these too.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo /.whl/ >> .git/info/exclude; }
rm -rf .whl && mkdir -p .whl
py=$(command -v python3)
[ -x .venv/bin/python ] && py=.venv/bin/python
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl diffusers==0.42.1 importlib_metadata platformdirs tomli-w spandrel==0.4.2 \
  spandrel-extra-arches==0.2.0
ls -la .whl
du -sh .whl
