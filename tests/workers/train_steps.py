"""Runs k jitted train steps of the tiny ResNet on fixed data; saves the result.

    python tests/workers/train_steps.py OUT.npz --devices=N [--method=groupdro]

Multi-process (2 hosts on this machine): also pass --process_id=I
--num_processes=P --coordinator=127.0.0.1:PORT. Each process feeds only its
share of every global batch through the real input pipeline; process 0 writes
OUT.npz. Used by tests/test_train_step.py.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse():
  p = argparse.ArgumentParser()
  p.add_argument("out")
  p.add_argument("--devices", type=int, default=1)
  p.add_argument("--method", default="groupdro")
  p.add_argument("--steps", type=int, default=3)
  # Adam turns reduction-order noise in near-zero gradients into full-size
  # steps (g / sqrt(g^2) = +-1), so exact equivalence is checked with SGD.
  p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--coordinator", default="")
  return p.parse_args()


def main():
  args = parse()
  os.environ["XLA_FLAGS"] = (
      f"--xla_force_host_platform_device_count={args.devices}")
  import jax  # pylint: disable=g-import-not-at-top
  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes,
                               args.process_id)
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    # The CPU collectives' context is set up by the first computation that
    # spans both processes and times out after 30 s if one process is late
    # (e.g. still compiling); set it up now, while both are in step.
    multihost_utils.sync_global_devices("ffr_jax:initialized")
  import numpy as np  # pylint: disable=g-import-not-at-top

  from ffr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from ffr_jax import models
  from ffr_jax.data import pipeline
  from ffr_jax.data.types import DatasetSpec, Examples, GroupScheme
  from ffr_jax.mesh import make_shardings, to_global
  from ffr_jax.training import state as state_lib
  from ffr_jax.training import steps as steps_lib
  from ffr_jax.training.methods import get_method

  cfg = config_lib.base_config()
  cfg.data.image_size = 16
  spec = DatasetSpec("toy", ("a", "b"), ("x", "y"),
                     ((0, 0), (0, 1), (1, 0), (1, 1)), (0, 1))
  rng = np.random.default_rng(0)
  n = 64
  ys = rng.integers(0, 2, n)
  bs = rng.integers(0, 2, n)
  examples = Examples.from_lists([f"mem://{i}" for i in range(n)], ys, bs)
  scheme = GroupScheme(spec)
  images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
  source = pipeline.RecordSource(
      keys=examples.path, columns=pipeline.Columns.from_examples(examples, scheme),
      image_size=16, cache=images)
  loader = pipeline.make_train_loader(source, None, cfg.data, batch_size=16,
                                      seed=0)
  shardings = make_shardings()
  model = models.create_model("tiny", 2)
  import optax  # pylint: disable=g-import-not-at-top
  tx = (optax.sgd(0.1, momentum=0.9) if args.optimizer == "sgd"
        else state_lib.make_optimizer(1e-3, 1e-5))
  state = state_lib.create_state(model, tx, 16, scheme.num_groups, 0, shardings)
  method = get_method(args.method)
  step_fn = steps_lib.make_train_step(
      model, tx, method.make_loss(method.settings(cfg), scheme.counts(examples)),
      steps_lib.StepConfig(num_groups=scheme.num_groups), shardings, state)
  losses = []
  for i, batch in enumerate(loader.epoch(0)):
    if i == args.steps:
      break
    b = to_global({k: batch[k] for k in ("image", "label", "group")}, shardings)
    state, m = step_fn(state, b)
    losses.append(m["loss"])
  state = jax.device_get(state)
  flat = {
      "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
      for path, v in jax.tree_util.tree_leaves_with_path(
          {"params": state.params, "batch_stats": state.batch_stats})}
  if jax.process_index() == 0:
    np.savez(args.out, losses=np.asarray(jax.device_get(losses)),
             group_weights=np.asarray(state.group_weights),
             cache_size=step_fn._cache_size(),  # pylint: disable=protected-access
             num_devices=jax.device_count(), **flat)
  return 0


if __name__ == "__main__":
  sys.exit(main())
