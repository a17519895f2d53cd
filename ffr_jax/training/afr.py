"""AFR, Automatic Feature Reweighting (Qiu et al., ICML 2023): no group labels
in training.

ERM trains on part of the training set (its last epoch is kept); then only
the last layer is retrained, on the held-out part's frozen embeddings, with
weights ``exp(-gamma * p_i)`` (``p_i`` the ERM model's probability of the true
class) divided by the class's count and normalised to sum to 1, plus
``lambda * (||W - W_erm||^2 + ||b - b_erm||^2)``: full-batch gradient descent
from the ERM head, gradients clipped to norm 1, as the authors' code. gamma
and lambda are chosen on val worst-group accuracy (val is not fitted, so its
score is held out). docs/reference.md, "AFR".
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ffr_jax.training import jtt as jtt_lib
from ffr_jax.training import last_layer
from ffr_jax.training import spec as spec_lib
from ffr_jax.training.methods import ERM, AfterResult, Context, Method


def _settings(config) -> dict:
  a = config.afr
  return {"heldout": float(a.heldout), "split_seed": int(a.split_seed),
          "gamma_grid": [float(g) for g in a.gamma_grid],
          "lambda_grid": [float(l) for l in a.lambda_grid],
          "lr": float(a.lr), "steps": int(a.steps)}


def _check(config) -> None:
  s = _settings(config)
  numbers = [s["heldout"], s["lr"], *s["gamma_grid"], *s["lambda_grid"]]
  if not all(math.isfinite(x) for x in numbers):
    raise ValueError("config.afr.*: heldout, lr and the gamma and lambda grids "
                     "must be finite numbers.")
  if not 0 < s["heldout"] < 1:
    raise ValueError(f"config.afr.heldout={s['heldout']} must lie in (0, 1): "
                     "the share of the training set held out for reweighting.")
  if not s["gamma_grid"] or not s["lambda_grid"] or min(s["lambda_grid"]) < 0:
    raise ValueError("config.afr.gamma_grid and config.afr.lambda_grid need at "
                     "least one value each (lambda >= 0).")
  if s["steps"] < 1 or not s["lr"] > 0:
    raise ValueError(f"config.afr.steps={s['steps']} and config.afr.lr="
                     f"{s['lr']} must be positive.")


def split(n: int, heldout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Row indices of the ERM part and the held-out part (a seeded shuffle)."""
  order = np.random.default_rng(seed).permutation(n)
  cut = n - int(heldout * n)
  return np.sort(order[:cut]), np.sort(order[cut:])


def _plan(plans: tuple, config) -> tuple:
  """The mode's last stage: ERM on the ERM part, its last epoch kept."""
  last, s = jtt_lib.method_stage(plans, "afr"), _settings(config)
  examples = last.examples
  if examples is not None:
    examples = examples.take(split(len(examples), s["heldout"], s["split_seed"])[0])
  erm = dataclasses.replace(
      last, examples=examples, method=ERM, method_settings=(),
      selection=spec_lib.SELECT_LAST, epoch0_candidate=False,
      data=spec_lib.json_digest({"part_of": last.data, "heldout": s["heldout"],
                                 "split_seed": s["split_seed"]}))
  return (*plans[:-1], erm)


def example_weights(p_true: np.ndarray, y: np.ndarray, gamma: float) -> np.ndarray:
  """``exp(-gamma p) / count(class)``, normalised to sum to 1."""
  w = np.exp(-gamma * p_true) / np.bincount(y)[y]
  return w / w.sum()


@jax.jit
def fit_heads(emb, y, weights, lambdas, kernel0, bias0, lr, steps):
  """One head per row of ``weights`` / ``lambdas``, from the ERM head."""

  def fit(w, lam):
    def loss(params):
      kernel, bias = params
      logp = jax.nn.log_softmax(emb @ kernel + bias)
      ce = -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]
      return jnp.sum(w * ce) + lam * (jnp.sum((kernel - kernel0) ** 2) +
                                      jnp.sum((bias - bias0) ** 2))

    def step(_, params):
      grads = jax.grad(loss)(params)
      norm = jnp.sqrt(sum(jnp.sum(g ** 2) for g in grads))
      scale = jnp.minimum(1.0, 1.0 / jnp.maximum(norm, 1e-12))
      return tuple(p - lr * scale * g for p, g in zip(params, grads))

    return jax.lax.fori_loop(0, steps, step, (kernel0, bias0))

  return jax.vmap(fit)(weights, lambdas)


def _after(ctx: Context) -> AfterResult:
  s = _settings(ctx.config)
  variables = last_layer.last_variables(ctx)
  train = ctx.spec.mode_stages[-1].train
  held = train.take(split(len(train), s["heldout"], s["split_seed"])[1])
  if not len(held):
    raise ValueError(f"AFR: config.afr.heldout={s['heldout']} holds out no "
                     f"example of {len(train)}; raise it.")
  kernel0, bias0 = last_layer.head(variables)
  emb = last_layer.context_embed(ctx, variables, held)
  p_true = np.asarray(jax.nn.softmax(emb @ kernel0 + bias0))[
      np.arange(len(held)), held.y]
  grid = list(itertools.product(s["gamma_grid"], s["lambda_grid"]))
  weights = np.stack([example_weights(p_true, np.asarray(held.y), g)
                      for g, _ in grid])
  kernels, biases = fit_heads(
      jnp.asarray(emb), jnp.asarray(held.y), jnp.asarray(weights, jnp.float32),
      jnp.asarray([l for _, l in grid], jnp.float32), jnp.asarray(kernel0),
      jnp.asarray(bias0), s["lr"], s["steps"])
  kernels, biases = np.asarray(kernels), np.asarray(biases)
  embs = {e.name: last_layer.context_embed(ctx, variables, e.examples)
          for e in ctx.spec.evals}

  def metrics(e, k) -> dict:
    pred = np.argmax(embs[e.name] @ kernels[k] + biases[k], axis=1)
    return last_layer.metrics_of(pred, e.examples, e.scheme)

  val = ctx.spec.evals[0]
  scores = [metrics(val, k)[spec_lib.SELECTION_METRIC] for k in range(len(grid))]
  best = int(np.argmax(scores))  # ties: the first in grid order
  details = {**s, "gamma": grid[best][0], "lambda": grid[best][1],
             "val_worst_group_acc": {f"gamma={g},lambda={l}": v
                                     for (g, l), v in zip(grid, scores)},
             "erm_size": len(train) - len(held), "heldout_size": len(held)}
  return AfterResult({e.name: metrics(e, best) for e in ctx.spec.evals},
                     details, head=last_layer.linear_head(kernels[best],
                                                          biases[best]))


AFR = Method("afr", settings=_settings, plan=_plan, after=_after,
             after_settings=_settings, check=_check)
