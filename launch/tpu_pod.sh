#!/usr/bin/env bash
# Runs a sweep on a Cloud TPU VM pod slice: the same command on every worker.
#
#   launch/tpu_pod.sh TPU_NAME ZONE SWEEP_CONFIG WORKDIR [extra sweep flags]
#   launch/tpu_pod.sh my-v4-32 us-central2-b configs/sweeps/paper.py gs-fuse/sweep
#
# Every worker runs `python -m ffr_jax.sweep ...` on the same runs in the same
# order; each ffr_jax.main process calls jax.distributed.initialize() by itself
# (a multi-host TPU slice is detected), so each run is one job over all chips
# of the slice, and host 0 alone writes results and checkpoints. WORKDIR must
# be a file system every worker sees (GCS FUSE, Filestore/NFS). The repository
# must be at the same path ($REPO, default ~/ffr_jax) on every worker, with
# `pip install -e .` done (e.g. with --command='cd ~/ffr_jax && pip install -e .').
#
# The sweep's subprocess executor is used (not inprocess): a run that fails on
# one host fails on all, and the next run starts with fresh processes. Runs
# already finished (results.json) are skipped, so rerun this after a
# preemption. Shared data is prepared first on worker 0 alone (the sweep
# process itself is not a distributed job, so only one worker may write).
set -euo pipefail

if [[ $# -lt 4 ]]; then
  sed -n '2,8p' "$0"
  exit 2
fi
TPU_NAME=$1
ZONE=$2
SWEEP_CONFIG=$3
WORKDIR=$4
shift 4
EXTRA=("$@")
REPO=${REPO:-'~/ffr_jax'}

printf -v EXTRA_Q ' %q' "${EXTRA[@]+"${EXTRA[@]}"}"
SWEEP="python -m ffr_jax.sweep --config=${SWEEP_CONFIG} --workdir=${WORKDIR}"

echo "Worker 0: preparing shared data."
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=0 \
  --command="cd ${REPO} && ${SWEEP} --prepare${EXTRA_Q}"

echo "Every worker: ${SWEEP} --executor=subprocess${EXTRA_Q}"
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all \
  --command="cd ${REPO} && ${SWEEP} --executor=subprocess${EXTRA_Q}"
