#!/usr/bin/env bash
# Run kdjax on every worker of a Cloud TPU pod slice (NOT run in this repository's CI:
# no TPU is reachable from the development machines).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b bash launch/tpu_pod.sh \
#       --config=configs/minilmv2.py --workdir=gs://bucket/runs/minilmv2 \
#       --config.teacher.path=/data/bert-base-chinese --config.input_dir=/data/corpus
#
# Every worker runs the same command; jax.distributed.initialize() discovers the pod
# (kdjax.trainer.distributed auto-initialises when TPU_WORKER_HOSTNAMES lists >1 host).
# The repository and its .venv must exist at the same path on all workers, e.g. set up once
# with: gcloud compute tpus tpu-vm ssh $TPU_NAME --zone $ZONE --worker=all \
#         --command="git clone <repo> kdjax && cd kdjax && bash run.sh install"
# Data: put input_dir on a disk or bucket every worker sees; each host reads its own files.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REPO_DIR=${REPO_DIR:-kdjax}
ARGS=$(printf '%q ' "$@")
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd $REPO_DIR && KDJAX_DISTRIBUTED=auto .venv/bin/python -m kdjax.train $ARGS"
