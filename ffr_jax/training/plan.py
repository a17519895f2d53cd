"""What one training stage depends on: a frozen :class:`StagePlan`.

A run (one mode x method) is a list of stage plans, built from the config by
:func:`plan_run`. A plan holds every setting the stage's result depends on and
nothing else: the examples it trains on (by content digest), the method and
its settings, the optimisation settings, the model, the seed and where its
initial weights come from (fresh, a pretrained file's content, or another
plan's fingerprint). Its hash, ``StagePlan.fingerprint``, is the one source of truth for

* the folder of a stage (``{stages_dir}/{name}-{fingerprint}``): a stage with
  the same plan is trained once, whichever run, mode or sweep asks for it
  (FFR's stage 1 is shared by every method because its plan names ERM);
* refusing foreign work (a folder whose stored fingerprint differs);
* the sweep's grouping of runs that share a stage.

Settings that change speed or logging but never results (log and checkpoint
intervals, eval batch size, input workers and caches, matmul forms of
convolutions) are :class:`LoopOptions`, outside the plan.

Adding a stage setting: a config key and a :class:`StagePlan` field filled in
:func:`_stage_plan`; the fingerprint, the stage folder and the sweep follow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from ffr_jax import config as config_lib
from ffr_jax.data import compose as compose_lib
from ffr_jax.data import images
from ffr_jax.data.types import Examples
from ffr_jax.training import methods as methods_lib

FRESH = "fresh"
FINGERPRINT_CHARS = 16


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """Every setting one stage's result depends on.

  Attributes:
    name: ``stage1`` / ``stage2`` (FFR), ``stage1_biased``, or ``train``.
    examples: the training examples (not hashed directly: see ``data``).
    data: digest of the examples' content: paths relative to their data root,
      classes, biases and sources. Without loaded data (sweep expansion), a
      digest of the data settings instead.
    by_source: the method's groups are ``(y, b, source)``, not ``(y, b)``.
    method: the method name (``erm`` for synthetic pretraining).
    method_settings: what the method reads from the config (GroupDRO's eta
      and size adjustment), as sorted ``(key, value)`` pairs.
    epochs: epochs to train.
    lr: Adam's (peak) learning rate.
    lr_schedule: ``constant`` (the authors') or ``cosine`` (from ``lr`` to 0
      over the stage's steps).
    batch_size: the global batch.
    weight_decay: L2 decay added to the gradient, as ``torch.optim.Adam``.
    freeze_bn: keep batch-norm statistics fixed (fine-tuning).
    image_size: input side in pixels.
    flip: random horizontal flips.
    model: the model's name and compute dtype.
    seed: seeds initialisation, data order and step randomness.
    init: ``fresh``, ``pretrained:<digest of the weights>`` or
      ``stage:<fingerprint of the stage it continues>``.
    epoch0_candidate: the starting model (epoch 0) may be selected.
  """

  name: str
  examples: Examples | None = dataclasses.field(compare=False, repr=False)
  data: str
  by_source: bool
  method: str
  method_settings: tuple[tuple[str, Any], ...]
  epochs: int
  lr: float
  lr_schedule: str
  batch_size: int
  weight_decay: float
  freeze_bn: bool
  image_size: int
  flip: bool
  model: str
  seed: int
  init: str
  epoch0_candidate: bool

  def __post_init__(self):
    # A bad value is caught when the run is planned from the config alone,
    # before anything is written (ffr_jax.training.run.validate_config).
    where = f"stage {self.name!r} (config.train.* or, pretraining, config.stage1.*)"
    _require(self.epochs >= 1, f"{where}: epochs={self.epochs} must be >= 1.")
    _require(self.lr >= 0, f"{where}: lr={self.lr} must be >= 0.")
    _require(self.lr_schedule in ("constant", "cosine"),
             f"config.train.lr_schedule={self.lr_schedule!r}: expected "
             "'constant' or 'cosine'.")
    _require(self.batch_size >= 1,
             f"config.train.batch_size={self.batch_size} must be >= 1.")
    _require(self.image_size >= 1,
             f"config.data.image_size={self.image_size} must be >= 1.")

  def settings(self) -> dict[str, Any]:
    """The hashed fields, as JSON-ready values."""
    return {f.name: _jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self) if f.compare}

  @property
  def fingerprint(self) -> str:
    """A stable hash of the settings (16 hex characters)."""
    return json_digest(self.settings())

  @property
  def folder(self) -> str:
    """The stage's folder name inside ``stages_dir``."""
    return f"{self.name}-{self.fingerprint}"


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """How a stage runs, never what it computes."""

  log_every: int = 50
  checkpoint_every: int = 0
  eval_batch_size: int = 256
  data: ml_collections.ConfigDict | None = None  # input pipeline options

  def __post_init__(self):
    _require(self.log_every >= 1,
             f"config.train.log_every={self.log_every} must be >= 1.")
    _require(self.checkpoint_every >= 0, "config.train.checkpoint_every="
             f"{self.checkpoint_every} must be >= 0 (0: at epoch ends).")
    _require(self.eval_batch_size >= 1, "config.train.eval_batch_size="
             f"{self.eval_batch_size} must be >= 1.")


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ValueError(message)


def _jsonable(value: Any) -> Any:
  if isinstance(value, tuple):
    return [_jsonable(v) for v in value]
  return value


def json_digest(value: Any, length: int = FINGERPRINT_CHARS) -> str:
  """A stable hash of a JSON value, ``length`` hex characters; other leaves as ``str``."""
  text = json.dumps(value, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:length]


def examples_digest(examples: Examples, roots: Sequence[str]) -> str:
  """The identity of a set of examples, independent of where data lives.

  Each path is taken relative to the longest of ``roots`` that holds it, so
  the same data under another root, or a copied workdir, has the same digest.
  The files' content identities (:attr:`Examples.content`, known when the
  loader checked the files; read now for examples built without them) are
  hashed too: pools generated with other settings, or a benchmark rendered
  with others, have the same relative paths and other bytes, and must not
  share a stage.
  """
  prefixes = sorted((os.path.abspath(r) + os.sep for r in roots if r),
                    key=len, reverse=True)

  def rel(path: str) -> str:
    path = os.path.abspath(path)
    for p in prefixes:
      if path.startswith(p):
        return path[len(p):]
    return path

  h = hashlib.sha256()
  h.update("\n".join(rel(str(p)) for p in examples.path).encode())
  for column in (examples.y, examples.b, examples.source):
    h.update(np.ascontiguousarray(column, np.int64).tobytes())
  content = (list(examples.content) if examples.content is not None
             else [""] * len(examples))
  # Rows built without identities (by hand, or concatenated with such rows).
  unknown = [str(p) for p, c in zip(examples.path, content) if not c]
  if unknown:
    identities = images.file_identities(unknown)
    content = [c or identities[str(p)] for p, c in zip(examples.path, content)]
  h.update("\n".join(str(c) for c in content).encode())
  return h.hexdigest()[:FINGERPRINT_CHARS]


def variables_digest(variables: Any) -> str:
  """A digest of weights (pretrained initialisation), by value."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(variables)):
    h.update(np.ascontiguousarray(leaf, np.float32).tobytes())
  return h.hexdigest()[:FINGERPRINT_CHARS]


def data_settings_digest(config: ml_collections.ConfigDict) -> str:
  """Stands in for the data digest before the data is loaded (sweeps).

  Everything under ``data``, ``generate`` and ``benchmark`` except the roots
  (which a sweep fills in) and the input-pipeline speed options.
  """
  flat = config_lib.flatten(config)
  kept = {k: v for k, v in flat.items()
          if k.split(".")[0] in ("data", "generate", "benchmark")
          and k not in config_lib.SPEED_ONLY_KEYS
          and not k.endswith("_root") and k != "data.root"}
  return "settings:" + json_digest(kept)


def loop_options(config: ml_collections.ConfigDict) -> LoopOptions:
  return LoopOptions(
      log_every=int(config.train.log_every),
      checkpoint_every=int(config.train.checkpoint_every),
      eval_batch_size=int(config.train.eval_batch_size),
      data=config.data)


def _stage_plan(stage: compose_lib.Stage, config: ml_collections.ConfigDict,
                method: str, data: str, init: str) -> StagePlan:
  """The plan of one composed stage: the only place config becomes a plan."""
  pretrain = stage.kind == compose_lib.PRETRAIN
  stage_method = methods_lib.ERM if pretrain else method
  epochs = config.stage1.epochs if pretrain else config.train.epochs
  lr = config.stage1.lr if pretrain else config_lib.train_lr(config)
  return StagePlan(
      name=stage.name,
      examples=stage.train,
      data=data,
      by_source=stage.by_source,
      method=stage_method,
      method_settings=tuple(sorted(
          methods_lib.get_method(stage_method).settings(config).items())),
      epochs=int(epochs),
      lr=float(lr),
      lr_schedule=str(config.train.lr_schedule),
      batch_size=int(config.train.batch_size),
      weight_decay=float(config.train.weight_decay),
      freeze_bn=bool(config.train.freeze_bn) and stage.kind == compose_lib.FINETUNE,
      image_size=int(config.data.image_size),
      flip=bool(config.data.flip),
      model=f"{config.model.name}/{config.model.dtype}",
      seed=int(config.seed),
      init=init,
      # Epoch 0 exists only for a stage that continues another one.
      epoch0_candidate=bool(config.train.select_epoch0) and init.startswith("stage:"),
  )


def plan_run(config: ml_collections.ConfigDict,
             stages: Sequence[compose_lib.Stage], *, roots: Sequence[str] = (),
             pretrained: str = FRESH) -> list[StagePlan]:
  """The stage plans of one mode x method, in training order.

  Args:
    config: the run's config (one mode and one method).
    stages: the mode's composed stages (:func:`ffr_jax.data.compose.compose`,
      or :func:`ffr_jax.data.compose.describe` without data).
    roots: data roots that the examples' paths are made relative to.
    pretrained: ``init`` of the first stage: ``fresh`` or
      ``pretrained:<digest>``.
  """
  plans, init = [], pretrained
  for stage in stages:
    data = (examples_digest(stage.train, roots) if stage.train is not None
            else data_settings_digest(config))
    plan = _stage_plan(stage, config, str(config.method), data, init)
    plans.append(plan)
    init = f"stage:{plan.fingerprint}"
  return plans
