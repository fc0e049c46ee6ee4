#!/usr/bin/env bash
# Wheels for the offline GPU check (docs/gpu-check.md): olmo-sam, ai2-olmo-core 3.0.0 and what it
# imports that the device lacks, bitsandbytes 0.50.2 (slimmed); CPython 3.12, manylinux x86_64,
# <= 60 MiB, with a manifest of what was left out.
#   bash scripts/gpu-wheels.sh [--dest gpu-wheels] [--budget-mib 60] [--list]
# --list prints the plan and the budget without downloading anything.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m olmo_sam_tools.gpucheck.wheels "$@"
