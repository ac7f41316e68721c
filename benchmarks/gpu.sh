#!/usr/bin/env bash
# The one GPU benchmark run: ViT-B/16 at 224 px, CLIPood vs ERM vs EMA, bf16 + torch.compile.
#
#   benchmarks/gpu.sh                  # on the GPU machine, from anywhere; extra args go to bench_gpu.py
#   benchmarks/gpu.sh --fetch-wheels   # on a machine with PyPI: download the pure-Python wheels the GPU
#                                      # machine may lack into .whl/ (keep .whl/ out of git), then carry it
#
# Installs clipood-zoo from this checkout (`pip install --no-deps -e .`: setup.py pins the CPU machines'
# torch, and the GPU machine's own torch/torchvision/timm must stay) plus the pure-Python packages it
# lacks (open_clip_torch, ftfy, webdataset...) from the carried .whl/ when there is one, else from PyPI. Writes
# benchmarks/results/gpu.json (and a copy into $OUT when that is set). Never run by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=(open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 webdataset==1.0.2 braceexpand==0.1.7)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    "$PY" -m pip download --no-deps --only-binary=:all: -d .whl "${WHEELS[@]}"
    ls -l .whl
    exit 0
fi

export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"

if ! "$PY" -c "import open_clip, webdataset, ftfy" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then  # carried wheels (no network there)
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl
    else
        "$PY" -m pip install -q --no-deps "${WHEELS[@]}"
    fi
fi
if ! "$PY" -c "import clipood_zoo" 2>/dev/null; then
    # --no-deps: setup.py pins the CPU machines' torch; the GPU machine's own torch/torchvision/timm must stay
    "$PY" -m pip install -q --no-build-isolation --no-deps -e . \
        || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import clipood_zoo, open_clip, timm; print('clipood_zoo', clipood_zoo.__version__, 'open_clip', open_clip.__version__, 'timm', timm.__version__)"

mkdir -p benchmarks/results
LOG=benchmarks/results/gpu.log
for a in "$@"; do [[ "$a" == "--dry-run" ]] && LOG=benchmarks/results/gpu_dryrun.log; done
"$PY" benchmarks/bench_gpu.py "$@" 2>&1 | tee "$LOG"
if [[ -n "${OUT:-}" && -d "${OUT:-}" ]]; then cp "$LOG" "$OUT/" || true; fi
