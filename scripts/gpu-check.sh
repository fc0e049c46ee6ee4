#!/usr/bin/env bash
# The GPU check (docs/gpu-check.md): on one NVIDIA H100/H200, offline, in about 8 minutes:
# SAM/ASAM on CUDA vs a CPU computation, a bf16 FSDP SAM run, bitsandbytes NF4/int8 on the GPU
# kernels, SAM's cost (step time, tokens/s, MFU, memory, annealing-switch run) for 20M/60M/150M,
# and fine-tuning K = 8 LRs of the 20M model as one batched grid vs one run at a time.
#
#   bash scripts/gpu-check.sh [--out DIR] [--wheels DIR] [--budget SECONDS] [--sections a,b]
#   bash scripts/gpu-check.sh --cpu-dry-run --out DIR     # anywhere: tiny sizes on CPU, < 1 min
#
# Results: DIR/gpu-check.json and DIR/gpu-check.md (default DIR: gpu-check-out). Wheels from
# `bash scripts/gpu-wheels.sh` (default folder gpu-wheels) are installed, if their distribution is
# missing, with `pip install --no-index --no-deps --target .gpu-check-site` (torch is never
# touched; GPU_CHECK_SITE=... moves it); olmo-sam itself runs from this checkout. PYTHON=... picks
# the interpreter.
# Exit status 0 when every section is ok, 1 otherwise, 2 for bad arguments, 3 if OLMo-core cannot
# be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
OUT=gpu-check-out
WHEELS=gpu-wheels
DRY=0
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out|--wheels|--budget|--sections)
      if [ $# -lt 2 ]; then echo "gpu-check.sh: $1 needs a value (see --help)" >&2; exit 2; fi
      case "$1" in
        --out) OUT="$2" ;;
        --wheels) WHEELS="$2" ;;
        *) PASS+=("$1" "$2") ;;
      esac
      shift 2 ;;
    --cpu-dry-run) DRY=1; PASS+=(--cpu-dry-run); shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3 python; do
    if command -v "$cand" >/dev/null && "$cand" -c "import torch" 2>/dev/null; then PY="$cand"; break; fi
  done
fi
if [ -z "$PY" ]; then echo "gpu-check.sh: no Python with torch found; set PYTHON=..." >&2; exit 2; fi

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "$DRY" = 1 ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
SITE="${GPU_CHECK_SITE:-$REPO/.gpu-check-site}"  # not under OUT: that comes back from a device
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  # the wheels whose distribution this Python lacks (olmo-sam: this checkout is what runs)
  mapfile -t MISSING < <("$PY" - "$WHEELS" <<'PYEOF'
import importlib.metadata as md
import pathlib
import sys

for w in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name = w.name.split("-")[0]
    if name.replace("_", "-").lower() == "olmo-sam":
        continue
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        print(w)
PYEOF
)
  if [ "${#MISSING[@]}" -gt 0 ]; then
    echo "gpu-check.sh: installing ${#MISSING[@]} wheels from $WHEELS into $SITE (--no-deps, --no-index)"
    if ! "$PY" -m pip install --quiet --no-index --no-deps --upgrade --target "$SITE" "${MISSING[@]}"; then
      # one at a time: what installs is used, what does not shows up as a failed section
      echo "gpu-check.sh: installing all wheels at once failed; trying one by one" >&2
      FAILED=0
      for w in "${MISSING[@]}"; do
        "$PY" -m pip install --quiet --no-index --no-deps --upgrade --target "$SITE" "$w" \
          || { echo "gpu-check.sh: could not install $w" >&2; FAILED=1; }
      done
      if [ "$FAILED" = 1 ] && ! "$PY" -c "import olmo_core" 2>/dev/null; then
        echo "gpu-check.sh: ai2-olmo-core does not import; nothing can run" >&2
        exit 3
      fi
    fi
  fi
elif [ "$DRY" = 0 ]; then
  echo "gpu-check.sh: no wheels in '$WHEELS' (make them with: bash scripts/gpu-wheels.sh); using what $PY has" >&2
fi

exec "$PY" -m olmo_sam_tools.gpucheck --out "$OUT" "${PASS[@]}"
