#!/usr/bin/env bash
# Thin wrapper: N local JAX processes joined by jax.distributed (see launch/local.py).
#   launch/local.sh --num_processes 2 --num_cpu_devices 4 -m kdjax.train -- --config ...
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-${ROOT}/.venv/bin/python}"
[[ -x "${PYTHON}" ]] || PYTHON=python3
export PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON}" "${ROOT}/launch/local.py" "$@"
