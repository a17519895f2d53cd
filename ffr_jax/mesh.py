"""One 1-D ``('data',)`` mesh over all devices of all hosts: batches sharded
on their leading axis, parameters and optimizer state replicated."""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
  """``jax.distributed.initialize()`` in a multi-process run: our launchers'
  ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``, a TPU
  pod or SLURM."""
  if getattr(maybe_initialize_distributed, "_done", False):
    return
  env = os.environ
  if "JAX_COORDINATOR_ADDRESS" in env:
    jax.distributed.initialize(
        coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(env["JAX_NUM_PROCESSES"]),
        process_id=int(env["JAX_PROCESS_ID"]))
  elif ("," in env.get("TPU_WORKER_HOSTNAMES", "")
        or int(env.get("SLURM_NTASKS", "1")) > 1):
    jax.distributed.initialize()
  else:
    return
  maybe_initialize_distributed._done = True
  # Collectives set themselves up on the first computation spanning all
  # processes, with a deadline; meet here while the processes are in step
  # rather than after their (unequal) data loading and compilation.
  multihost_utils.sync_global_devices("ffr_jax:initialized")
  logging.info("jax.distributed: process %d of %d, %d devices in all.",
               jax.process_index(), jax.process_count(), jax.device_count())


@dataclasses.dataclass(frozen=True)
class Shardings:

  mesh: Mesh

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(DATA_AXIS))

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size


def make_shardings(devices=None) -> Shardings:
  """A ``('data',)`` mesh over ``devices`` (default: all devices, all hosts)."""
  devices = jax.devices() if devices is None else devices
  # Not jax.make_mesh: it reorders devices (by id on GPU, by torus position on
  # TPU), refuses multi-slice TPUs and defaults to Explicit axes; this mesh
  # keeps the order of ``devices`` and Auto axes.
  return Shardings(Mesh(np.asarray(devices), (DATA_AXIS,)))


def check_batch_size(global_batch: int, shardings: Shardings) -> None:
  n = shardings.num_devices
  if global_batch % n:
    raise ValueError(
        f"Global batch size {global_batch} is not divisible by the {n} devices "
        "of the mesh; choose a multiple of the device count.")


def to_global(local_batch: dict, shardings: Shardings) -> dict:
  """This host's part of a batch as global arrays sharded on 'data'."""
  return {
      k: jax.make_array_from_process_local_data(shardings.batch, np.asarray(v))
      for k, v in local_batch.items()
  }
