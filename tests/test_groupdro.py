"""GroupDRO: the canonical update, step by step, and its edge cases."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffr_jax.training import groupdro


def _reference_step(losses, groups, q, eta, c=0.0, sizes=None):
  """Sagawa's compute_group_avg + compute_robust_loss in plain Python."""
  g_count = len(q)
  group_loss = []
  for g in range(g_count):
    members = [l for l, gi in zip(losses, groups) if gi == g]
    group_loss.append(sum(members) / max(len(members), 1))
  adjusted = list(group_loss)
  if sizes is not None:
    adjusted = [a + (c / math.sqrt(n) if n > 0 else 0.0)
                for a, n in zip(adjusted, sizes)]
  q = [qi * math.exp(eta * a) for qi, a in zip(q, adjusted)]
  q = [qi / sum(q) for qi in q]
  loss = sum(l * qi for l, qi in zip(group_loss, q))
  return loss, q, group_loss


def test_init_weights_uniform():
  q = groupdro.init_weights(4)
  assert q.dtype == jnp.float32
  np.testing.assert_allclose(q, [0.25] * 4)
  with pytest.raises(ValueError):
    groupdro.init_weights(0)


def test_three_steps_against_hand_computation():
  eta = 0.5  # large enough that q moves visibly in three steps
  batches = [
      ([1.0, 3.0, 0.5, 2.0, 4.0], [0, 0, 1, 2, 2]),  # L = (2, .5, 3)
      ([0.2, 0.4, 6.0], [1, 1, 2]),                  # group 0 absent
      ([1.5, 0.1, 0.3, 2.5], [0, 1, 2, 0]),          # L = (2, .1, .3)
  ]
  # Step 1 by hand: q = (1/3)*exp(.5*(2, .5, 3)), normalised.
  e = [math.exp(1.0), math.exp(0.25), math.exp(1.5)]
  q1 = [v / sum(e) for v in e]
  ref_q = [1 / 3] * 3
  q = groupdro.init_weights(3)
  for step, (losses, groups) in enumerate(batches):
    ref_loss, ref_q, ref_gl = _reference_step(losses, groups, ref_q, eta)
    out = groupdro.groupdro_loss(jnp.array(losses), jnp.array(groups), None,
                                 q, eta)
    q = out.weights
    if step == 0:
      np.testing.assert_allclose(ref_q, q1, rtol=1e-12)
      assert ref_loss == pytest.approx(2 * q1[0] + 0.5 * q1[1] + 3 * q1[2])
    np.testing.assert_allclose(out.group_losses, ref_gl, rtol=1e-6)
    np.testing.assert_allclose(q, ref_q, rtol=1e-6)
    assert float(out.loss) == pytest.approx(ref_loss, rel=1e-6)
  # Closed form: q_T is proportional to exp(eta * sum_t L_g,t), here
  # exp(.5 * (2+0+2, .5+.3+.1, 3+6+.3)) = exp((2, .45, 4.65)).
  e = np.exp([2.0, 0.45, 4.65])
  np.testing.assert_allclose(q, e / e.sum(), rtol=1e-6)
  np.testing.assert_allclose(q, [0.065078, 0.013813, 0.921110], atol=1e-6)


def test_absent_group_has_zero_loss_and_only_renormalises():
  q = jnp.array([0.2, 0.3, 0.5])
  out = groupdro.groupdro_loss(jnp.array([1.0, 2.0]), jnp.array([0, 0]),
                               None, q, eta=0.1)
  np.testing.assert_allclose(out.group_losses, [1.5, 0.0, 0.0])
  np.testing.assert_array_equal(out.group_counts, [2, 0, 0])
  # Groups 1 and 2 were multiplied by exp(0) = 1: their ratio is unchanged.
  assert float(out.weights[1] / out.weights[2]) == pytest.approx(0.6)
  z = 0.2 * math.exp(0.15) + 0.8
  np.testing.assert_allclose(
      out.weights, [0.2 * math.exp(0.15) / z, 0.3 / z, 0.5 / z], rtol=1e-6)


def test_mask_drops_rows_even_with_inf_loss():
  q = groupdro.init_weights(2)
  out = groupdro.groupdro_loss(jnp.array([1.0, jnp.inf, 3.0]),
                               jnp.array([0, 1, 1]),
                               jnp.array([True, False, True]), q, eta=0.01)
  np.testing.assert_allclose(out.group_losses, [1.0, 3.0])
  np.testing.assert_array_equal(out.group_counts, [1, 1])
  assert np.isfinite(float(out.loss))


def test_size_adjustment_and_empty_training_group():
  losses, groups = [1.0, 2.0, 0.5], [0, 1, 1]
  sizes = [100.0, 4.0, 0.0]  # group 2 has no training data
  q = groupdro.init_weights(3)
  out = groupdro.groupdro_loss(jnp.array(losses), jnp.array(groups), None, q,
                               eta=0.1, size_adjustment=2.0,
                               group_sizes=jnp.array(sizes))
  ref_loss, ref_q, _ = _reference_step(losses, groups, [1 / 3] * 3, 0.1,
                                       c=2.0, sizes=sizes)
  assert np.isfinite(np.asarray(out.weights)).all()
  np.testing.assert_allclose(out.weights, ref_q, rtol=1e-6)
  # The loss uses the unadjusted group losses.
  assert float(out.loss) == pytest.approx(ref_loss, rel=1e-6)
  np.testing.assert_allclose(out.group_losses, [1.0, 1.25, 0.0])
  np.testing.assert_allclose(groupdro.size_adjustments(jnp.array(sizes), 2.0, 3),
                             [0.2, 1.0, 0.0])


def test_huge_loss_does_not_overflow():
  q = groupdro.init_weights(2)
  out = groupdro.groupdro_loss(jnp.array([1e5, 1.0]), jnp.array([0, 1]), None,
                               q, eta=1.0)
  assert np.isfinite(np.asarray(out.weights)).all()
  np.testing.assert_allclose(out.weights, [1.0, 0.0], atol=1e-6)


def test_jit_matches_eager():
  rng = np.random.default_rng(0)
  losses = jnp.asarray(rng.random(32), jnp.float32)
  groups = jnp.asarray(rng.integers(0, 4, 32), jnp.int32)
  mask = jnp.asarray(rng.random(32) < 0.9)
  q = jnp.array([0.1, 0.2, 0.3, 0.4])
  sizes = jnp.array([10.0, 20.0, 0.0, 5.0])
  args = (losses, groups, mask, q, 0.01, 0.5, sizes)
  eager = groupdro.groupdro_loss(*args)
  jitted = jax.jit(groupdro.groupdro_loss)(*args)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_gradient_is_q_over_count():
  losses = jnp.array([0.3, 1.2, 0.7, 2.0, 0.1, 5.0])
  groups = jnp.array([0, 0, 0, 1, 2, 2])
  mask = jnp.array([True, True, True, True, True, False])
  q = jnp.array([0.5, 0.3, 0.2])

  def f(l):
    return groupdro.groupdro_loss(l, groups, mask, q, 0.05).loss

  grad = jax.grad(f)(losses)
  new_q = np.asarray(groupdro.groupdro_loss(losses, groups, mask, q, 0.05)
                     .weights)
  counts = np.array([3, 1, 1])
  expected = [new_q[g] / counts[g] for g in [0, 0, 0, 1, 2]] + [0.0]
  np.testing.assert_allclose(grad, expected, rtol=1e-6)


_SHARDED_SCRIPT = r"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ffr_jax.training import groupdro

assert jax.device_count() == 4, jax.devices()
rng = np.random.default_rng(0)
losses = jnp.asarray(rng.random(16), jnp.float32)
groups = jnp.asarray(rng.integers(0, 3, 16), jnp.int32)
mask = jnp.asarray(rng.random(16) < 0.8)
q = groupdro.init_weights(3)
mesh = Mesh(np.array(jax.devices()), ("data",))
batch = NamedSharding(mesh, P("data"))
args = [jax.device_put(a, batch) for a in (losses, groups, mask)]
f = jax.jit(lambda l, g, m, q: groupdro.groupdro_loss(l, g, m, q, 0.1))
sharded = f(*args, jax.device_put(q, NamedSharding(mesh, P())))
single = groupdro.groupdro_loss(losses, groups, mask, q, 0.1)
for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(single)):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
print("OK")
"""


def test_batch_sharded_over_four_devices_matches_one():
  # A subprocess, because the host device count is fixed at jax's first use.
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  done = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT], env=env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "OK" in done.stdout
