#!/usr/bin/env bash
# Fill .whl/ with the pure-Python dependencies a bare CUDA PyTorch image lacks (open_clip, jsonargparse, omegaconf
# and what they need), for a GPU machine that cannot reach PyPI. Run it where pip works; benchmarks/gpu_check.sh
# installs them from .whl/ when it finds the packages missing. Target: CPython 3.12, x86-64 Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for requirement in open_clip_torch==3.3.0 ftfy wcwidth jsonargparse==4.53.0 docstring-parser typeshed-client \
        importlib_resources omegaconf==2.3.0; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$requirement"
done
# omegaconf's parser runtime is published as a source archive only; it is pure Python, so build the wheel here.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -1 .whl
