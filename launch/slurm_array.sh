#!/usr/bin/env bash
# A SLURM job array over a sweep: array task i runs shard i of N.
#
#   # 1. Once, on a login or CPU node: render / generate the shared data.
#   python -m ffr_jax.sweep --config=configs/sweeps/paper.py --workdir=$W --prepare
#   # 2. The array (N tasks, at most 16 at a time):
#   SWEEP_CONFIG=configs/sweeps/paper.py WORKDIR=$W \
#     sbatch --array=0-63%16 launch/slurm_array.sh
#
# With --array=0-(N-1), N = SLURM_ARRAY_TASK_COUNT shards. Runs that share an
# FFR stage 1 always fall in the same shard (ffr_jax.sweep.shard), so no two
# tasks train the same stage 1 at once; choose N no larger than the number of
# such groups plus the other runs (`--list` shows the runs) or some tasks get
# nothing to do. One run per task: N = the number of runs (then a task holding
# a stage-1 group runs its few runs one after another).
#
# Rerun the same sbatch after failures or preemption: finished runs are
# skipped and unfinished ones resume from their checkpoints. One GPU per task;
# adjust the resources below to your cluster.
#SBATCH --job-name=ffr-sweep
#SBATCH --output=slurm-%A_%a.out
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=24:00:00
set -euo pipefail

: "${SWEEP_CONFIG:?set SWEEP_CONFIG, e.g. configs/sweeps/paper.py}"
: "${WORKDIR:?set WORKDIR, a folder every node sees}"
: "${SLURM_ARRAY_TASK_ID:?submit with sbatch --array=0-(N-1)}"
N=${SHARDS:-${SLURM_ARRAY_TASK_COUNT:?}}
cd "${REPO:-$SLURM_SUBMIT_DIR}"

# One task = one process on one GPU: keep jax.distributed off (a multi-task
# SLURM step would otherwise be taken for one multi-host job).
unset SLURM_NTASKS SLURM_NPROCS
exec python -m ffr_jax.sweep --config="${SWEEP_CONFIG}" --workdir="${WORKDIR}" \
  --shard="${SLURM_ARRAY_TASK_ID}/${N}" --executor=subprocess "${@}"
