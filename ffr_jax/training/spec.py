"""What a run depends on, computed in one place: ``plan_run(config) -> RunSpec``.

A :class:`StagePlan` holds every setting one stage's result depends on, the
sets that evaluate it included; its hash names the stage's folder
(``{stages_dir}/{name}-{fingerprint}``), so a stage is trained once for every
run that plans it. The :class:`RunSpec` adds the method's after-stage step and
the run's data identity, declared by the dataset and generator definitions.
Planned from the config alone, examples are named by those settings; with
loaded data, by content. Speed-only settings are :class:`LoopOptions`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from ffr_jax import config as config_lib
from ffr_jax.data import compose as compose_lib
from ffr_jax.data import datasets
from ffr_jax.data import images
from ffr_jax.data.types import Examples, GroupScheme
from ffr_jax.generation import factory as generation
from ffr_jax.training import methods as methods_lib

FRESH = "fresh"
FINGERPRINT_CHARS = 16
STAGES_DIR = "stages"  # {workdir}/stages unless train.stages_dir is set
SELECTION_SPLIT = "val"
SELECTION_METRIC = "worst_group_acc"
SYNTHETIC_TEST = "synthetic_test"
# How a stage picks the epoch it hands on: best val worst-group accuracy, or
# the last epoch (JTT's identification model).
SELECT_BEST, SELECT_LAST = "best_val", "last"


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """Every setting one stage's result depends on; hashed into its folder name.

  ``data`` and ``evals`` name examples by content (or, before loading, by
  their settings); ``init`` is ``fresh``, ``pretrained:<weights digest>`` or
  ``stage:<fingerprint>`` of the stage whose selected model it starts from.
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
  evals: tuple[tuple[str, str], ...]
  selection: str = SELECT_BEST

  def __post_init__(self):
    where = f"stage {self.name!r} (config.train.* or, pretraining, config.stage1.*)"
    _require(self.epochs >= 1, f"{where}: epochs={self.epochs} must be >= 1.")
    _require(math.isfinite(self.lr) and self.lr >= 0,
             f"{where}: lr={self.lr} must be a finite number >= 0.")
    _require(self.lr_schedule in ("constant", "cosine"),
             f"config.train.lr_schedule={self.lr_schedule!r}: expected "
             "'constant' or 'cosine'.")
    _require(math.isfinite(self.weight_decay),
             f"config.train.weight_decay={self.weight_decay} must be finite.")
    _require(self.batch_size >= 1,
             f"config.train.batch_size={self.batch_size} must be >= 1.")
    _require(self.image_size >= 1,
             f"config.data.image_size={self.image_size} must be >= 1.")

  def settings(self) -> dict[str, Any]:
    """The hashed fields, as JSON values."""
    return {f.name: _jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self) if f.compare}

  @property
  def fingerprint(self) -> str:
    return json_digest(self.settings())

  @property
  def folder(self) -> str:
    return f"{self.name}-{self.fingerprint}"


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """A split evaluated after every epoch, grouped by ``(y, b)``."""

  name: str
  examples: Examples
  scheme: GroupScheme


@dataclasses.dataclass(frozen=True)
class LoopOptions:
  """How a stage runs, never what it computes (config.SPEED_ONLY_KEYS)."""

  log_every: int = 50
  checkpoint_every: int = 0
  checkpoint_epochs: int = 1
  eval_batch_size: int = 256
  cache_images: bool = False
  num_workers: int = 0
  image_cache_dir: str = ""

  def __post_init__(self):
    _require(self.log_every >= 1,
             f"config.train.log_every={self.log_every} must be >= 1.")
    _require(self.checkpoint_every >= 0, "config.train.checkpoint_every="
             f"{self.checkpoint_every} must be >= 0 (0: at epoch ends).")
    _require(self.checkpoint_epochs >= 0, "config.train.checkpoint_epochs="
             f"{self.checkpoint_epochs} must be >= 0 (0: the last epoch only).")
    _require(self.eval_batch_size >= 1, "config.train.eval_batch_size="
             f"{self.eval_batch_size} must be >= 1.")

  def input_config(self, image_size: int, flip: bool = False
                   ) -> ml_collections.ConfigDict:
    """What the input pipeline reads."""
    return ml_collections.ConfigDict({
        "cache_images": self.cache_images, "num_workers": self.num_workers,
        "image_cache_dir": self.image_cache_dir, "image_size": image_size,
        "flip": flip})


@dataclasses.dataclass(frozen=True)
class DataIdentity:
  """Digests of the settings a run's data comes from (roots excluded: a folder
  is where data lives, not what it is): what a self-contained dataset renders,
  the loaded splits, the generated pool (one serves every count), the
  synthetic test set ("" without one)."""

  prepared: str
  real: str
  pool: str
  synthetic_test: str


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One mode x method: its stage plans, after-stage step, data and folders."""

  mode: str
  method: str
  stages: tuple[StagePlan, ...]
  after: dict[str, Any]  # the method's after-stage settings ({} without one)
  data: DataIdentity
  stages_dir: str
  evals: tuple[EvalSet, ...] = ()
  # The mode's stages before the method rewrote them (after-stage steps read
  # the last one's examples), and the synthetic images each group got.
  mode_stages: tuple[compose_lib.Stage, ...] = ()
  synthetic_per_group: dict = dataclasses.field(default_factory=dict)

  @property
  def fingerprint(self) -> str:
    return json_digest({"stages": [p.fingerprint for p in self.stages],
                        "method": self.method, "after": self.after})

  def stage_dir(self, plan: StagePlan) -> str:
    return os.path.join(self.stages_dir, plan.folder)

  @property
  def unit(self) -> str:
    """Runs with one unit share their first stage: a sweep shard takes whole units."""
    return self.stages[0].fingerprint


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
  """The identity of examples wherever their data lives.

  Paths count relative to the longest of ``roots`` holding them (a moved
  workdir keeps its digests); the files' size and CRC-32 count too, since
  pools generated or rendered with other settings share relative paths.
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
  unknown = [str(p) for p, c in zip(examples.path, content) if not c]
  if unknown:  # rows built by hand (or concatenated with such rows)
    identities = images.file_identities(unknown)
    content = [c or identities[str(p)] for p, c in zip(examples.path, content)]
  h.update("\n".join(str(c) for c in content).encode())
  return h.hexdigest()[:FINGERPRINT_CHARS]


def variables_digest(variables: Any) -> str:
  """A digest of weights by value (a pretrained initialisation)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(variables)):
    h.update(np.ascontiguousarray(leaf, np.float32).tobytes())
  return h.hexdigest()[:FINGERPRINT_CHARS]


def _picked(flat: dict[str, Any], keys: Sequence[str]) -> dict:
  return {k: flat[k] for k in keys if k in flat}


def data_identity(config: ml_collections.ConfigDict) -> DataIdentity:
  """The run's data as its dataset and generator definitions declare it."""
  dataset = datasets.get_dataset(str(config.data.name))
  generator = generation.GENERATORS.get(str(config.generate.generator))
  flat = config_lib.flatten(config)
  prepared = {"data.name": str(config.data.name), **_picked(flat, dataset.keys)}
  real = {**prepared, **_picked(flat, (
      "data.bias_ratio", "data.split_seed", "data.bias_val",
      *(f"data.{key}" for _, key in dataset.options)))}
  pool = {"data.name": str(config.data.name),
          "generate.generator": str(config.generate.generator),
          **_picked(flat, generator.keys)}
  test = ""
  if int(config.eval.synthetic_test_per_group) > 0:
    test = json_digest({**pool, "generate.seed": int(config.eval.synthetic_test_seed),
                        "per_group": int(config.eval.synthetic_test_per_group)})
  return DataIdentity(prepared=json_digest(prepared), real=json_digest(real),
                      pool=json_digest(pool), synthetic_test=test)


def data_key(config: ml_collections.ConfigDict, modes: Sequence[str] = ()) -> str:
  """Equal for runs that read the same data from the same folders."""
  return json_digest({
      "data": dataclasses.asdict(data_identity(config)), "modes": sorted(modes),
      "synthetic_per_group": int(config.data.synthetic_per_group),
      "roots": [config.data.root, config.data.synthetic_root,
                config.eval.synthetic_test_root]}, 64)


def loop_options(config: ml_collections.ConfigDict) -> LoopOptions:
  return LoopOptions(
      log_every=int(config.train.log_every),
      checkpoint_every=int(config.train.checkpoint_every),
      checkpoint_epochs=int(config.train.checkpoint_epochs),
      eval_batch_size=int(config.train.eval_batch_size),
      cache_images=bool(config.data.cache_images),
      num_workers=int(config.data.num_workers),
      image_cache_dir=str(config.data.image_cache_dir))


def _stage_plan(stage: compose_lib.Stage, config: ml_collections.ConfigDict,
                method: str, data: str, init: str,
                evals: tuple[tuple[str, str], ...]) -> StagePlan:
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
      evals=evals)


def _settings_digests(config, ident: DataIdentity, stages) -> tuple[list[str], tuple]:
  """Stage data and eval identities from settings (no data loaded)."""
  per_group = int(config.data.synthetic_per_group)
  synthetic = json_digest({"pool": ident.pool,
                           "set": compose_lib.synthetic_set(str(config.mode)),
                           "counts": per_group if per_group >= 0 else ident.real})
  source = {compose_lib.REAL_DATA: ident.real, compose_lib.SYNTHETIC_DATA: synthetic,
            compose_lib.BOTH_DATA: json_digest([ident.real, synthetic])}
  evals = [("val", ident.real), ("test", ident.real)]
  if ident.synthetic_test:
    evals.append((SYNTHETIC_TEST, ident.synthetic_test))
  return [f"settings:{source[s.source]}" for s in stages], tuple(evals)


def eval_sets(splits, synthetic_test: Examples | None) -> tuple[EvalSet, ...]:
  """Every split a run evaluates after each epoch; val first (selection)."""
  scheme = GroupScheme(splits.spec, by_source=False)
  evals = [EvalSet(SELECTION_SPLIT, splits.val, scheme),
           EvalSet("test", splits.test, scheme)]
  if synthetic_test is not None:
    evals.append(EvalSet(SYNTHETIC_TEST, synthetic_test, scheme))
  return tuple(evals)


def plan_run(config: ml_collections.ConfigDict, data=None, *,
             pretrained: str = FRESH, workdir: str = "") -> RunSpec:
  """The RunSpec of one mode x method; without ``data`` (a loaded
  ``run.RunData``) from the settings alone, every value checked all the same."""
  mode, method_name = str(config.mode), str(config.method)
  method = methods_lib.get_method(method_name)
  method.check(config)
  ident = data_identity(config)
  if data is None:
    stages, per_group, evals = compose_lib.describe(mode), {}, ()
    digests, eval_ids = _settings_digests(config, ident, stages)
  else:
    composition = compose_lib.compose(
        mode, data.splits.spec, data.splits.train, data.synthetic,
        config.data.synthetic_per_group)
    stages, per_group = composition.stages, composition.synthetic_per_group
    evals = eval_sets(data.splits, data.synthetic_test)
    digests = [examples_digest(s.train, data.roots) for s in stages]
    eval_ids = tuple((e.name, examples_digest(e.examples, data.roots))
                     for e in evals)
  plans, init = [], pretrained
  for stage, digest in zip(stages, digests):
    plans.append(_stage_plan(stage, config, method_name, digest, init, eval_ids))
    init = f"stage:{plans[-1].fingerprint}"
  plans = method.plan(tuple(plans), config)
  stages_dir = str(config.train.stages_dir) or os.path.join(workdir, STAGES_DIR)
  return RunSpec(mode=mode, method=method_name, stages=tuple(plans),
                 after=method.after_settings(config), data=ident,
                 stages_dir=stages_dir, evals=evals, mode_stages=tuple(stages),
                 synthetic_per_group=per_group)
