#!/usr/bin/env bash
# One machine with several GPUs (e.g. 8): a single process drives them all; the mesh spans
# every local GPU (NOT run in this repository's CI, which has no GPU).
#
#   bash launch/multigpu.sh --config=configs/minilmv2.py --workdir=runs/minilmv2 \
#       --config.teacher.path=/models/bert-base-chinese --config.input_dir=/data/corpus \
#       --config.mesh.fsdp=8 --config.mesh.data=1
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
exec .venv/bin/python -m kdjax.train "$@"
