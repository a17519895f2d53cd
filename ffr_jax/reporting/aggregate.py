"""From many ``results.json`` files (or one ``runs.jsonl``) to the paper's numbers.

A run is one seed of a *cell* (dataset, bias ratio, mode, method and any
*condition*, e.g. ``benchmark.strength``) with some *hyperparameters*, chosen
per cell on the ``selection`` score. Missing stays None, never zero.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from ffr_jax import config as config_lib
from ffr_jax.reporting.results import RESULTS_FILE
from ffr_jax.training.methods import METHODS

# Config keys chosen per cell on validation data, when they vary; so is every
# key of a method's own section (groupdro.*, dfr.*, jtt.*, afr.*).
HPARAM_KEYS = (
    "train.lr", "train.freeze_bn", "train.epochs", "train.weight_decay",
    "train.batch_size", "stage1.lr", "stage1.epochs",
)
# Keys that never define a condition: the cell keys and seeds (a rendered
# benchmark instance is part of its seed), paths (which follow from other
# settings), and settings that change speed, not results.
IGNORED_KEYS = frozenset({
    "seed", "benchmark.seed", "mode", "method", "data.name", "data.bias_ratio",
    "data.root", "data.synthetic_root", "eval.synthetic_test_root",
    "model.pretrained", "generate.model"}) | config_lib.SPEED_ONLY_KEYS
METRICS = ("selection_wa", "val_wa", "test_wa", "test_ba", "syn_wa",
           "syn_ba")


@dataclasses.dataclass(frozen=True)
class Record:
  """One finished run, reduced to what the report needs (accuracies in [0, 1])."""

  path: str
  dataset: str
  bias_ratio: float
  mode: str
  method: str
  seed: int
  settings: dict[str, Any]  # flattened config, lists as tuples
  selection_wa: float
  selection_source: str  # "val", or "backbone_val" for DFR
  val_wa: float
  test_wa: float
  test_ba: float
  syn_wa: float | None = None
  syn_ba: float | None = None
  lr: float | None = None  # the stage-2 or only stage's
  stage1_lr: float | None = None  # the synthetic stage's
  freeze_bn: bool | None = None
  selected_epoch: int | None = None
  test_group_acc: dict | None = dataclasses.field(default=None, compare=False)
  grid: str = "planned"  # or "extension": the sweep config says (report --sweep)
  control: str = ""  # a control's name: a cell of its own, never a candidate

  @property
  def wa_ba_gap(self) -> float:
    """Test BA - WA: how far the worst group lags the average."""
    return self.test_ba - self.test_wa


def _selection(results: dict, path: str) -> tuple[float, str]:
  """``(worst_group_acc, source)`` of ``results["selection"]``."""
  sel = results.get("selection")
  if not isinstance(sel, dict) or not {"worst_group_acc", "source"} <= set(sel):
    raise ValueError(
        f"{path or 'results.json'}: no 'selection' entry with "
        "'worst_group_acc' and 'source' (the score hyperparameters are chosen "
        "on); it was written by an older version: rerun or regenerate it.")
  return float(sel["worst_group_acc"]), str(sel["source"])


def _train_lr(results: dict) -> float:
  return config_lib.train_lr(ml_collections.ConfigDict(
      {"train": results["config"]["train"], "mode": results["mode"]}))


def _learning_rates(results: dict) -> tuple[float | None, float | None]:
  """(stage-2 or only stage's lr, synthetic stage's lr or None)."""
  config = results.get("config") or {}
  if "train" not in config or "lr" not in config["train"]:
    return None, None
  lr = _train_lr(results)
  stage1_lr = (config.get("stage1") or {}).get("lr")
  if not any(s.startswith("stage1") for s in results.get("stage_order", ())):
    return lr, None
  return (stage1_lr if results["mode"] == "stage1_only" else lr), stage1_lr


def record_from_results(results: dict, path: str = "") -> Record:
  syn = results.get("synthetic_test") or {}
  selection_wa, selection_source = _selection(results, path)
  config = config_lib.flatten(results.get("config", {}))
  lr, stage1_lr = _learning_rates(results)
  if "train.lr" in config:  # the rate the run trained at: -1 and
    # train.lr_by_mode resolved, so runs that differ only there are one setting
    config["train.lr"] = _train_lr(results)
    config.pop("train.lr_by_mode", None)
  return Record(
      path=path, dataset=results["dataset"],
      bias_ratio=float(results["bias_ratio"]), mode=results["mode"],
      method=results["method"], seed=int(results["seed"]),
      settings={k: tuple(v) if isinstance(v, list) else v  # hashable lists
                for k, v in config.items()},
      selection_wa=selection_wa, selection_source=selection_source,
      val_wa=float(results["val"]["worst_group_acc"]),
      test_wa=float(results["test"]["worst_group_acc"]),
      test_ba=float(results["test"]["balanced_acc"]),
      syn_wa=syn.get("worst_group_acc"), syn_ba=syn.get("balanced_acc"),
      lr=lr, stage1_lr=stage1_lr, freeze_bn=config.get("train.freeze_bn"),
      selected_epoch=results.get("selected_epoch"),
      test_group_acc=results["test"].get("group_acc"))


def results_paths(workdir: str) -> list[str]:
  return sorted(os.path.join(root, RESULTS_FILE)
                for root, _, files in os.walk(workdir) if RESULTS_FILE in files)


def load_records(workdir: str) -> list[Record]:
  """Every ``results.json`` under ``workdir``, ``path`` relative to it."""
  records = []
  for path in results_paths(workdir):
    with open(path) as f:
      record = record_from_results(json.load(f), path)
    records.append(dataclasses.replace(
        record, path=os.path.relpath(os.path.dirname(path), workdir)))
  return records


# runs.jsonl: one object per run, enough to rebuild every table and figure;
# ``path`` is written as ``run``, ``settings`` only with the keys that vary.
_ROW_FIELDS = tuple(f.name for f in dataclasses.fields(Record)
                    if f.name not in ("path", "settings"))


def write_runs(records: Sequence[Record], path: str) -> None:
  keys = sorted(set().union(*split_keys(records)))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    for r in records:
      row = {"run": r.path, **{k: getattr(r, k) for k in _ROW_FIELDS},
             "settings": {k: r.settings.get(k) for k in keys}}
      f.write(json.dumps(row, sort_keys=True) + "\n")


def load_runs(path: str) -> list[Record]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No runs file {path}; write one with "
                            "`python -m ffr_jax.report --workdir=DIR`.")
  records = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        settings = {k: tuple(v) if isinstance(v, list) else v
                    for k, v in row.pop("settings").items()}
        records.append(Record(path=row.pop("run"), settings=settings, **row))
      except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}:{lineno}: not a run of runs.jsonl ({e}).") from None
  return records


@dataclasses.dataclass(frozen=True)
class Stat:
  """Mean and sample standard deviation (None for one value) of ``n`` values."""

  mean: float
  std: float | None
  n: int

  def format(self) -> str:
    if self.std is None:
      return f"{100 * self.mean:.1f} (n=1)"
    return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}"


def stat(values: Sequence[float]) -> Stat | None:
  """Mean and sample std (``ddof=1``); None for no values."""
  values = np.asarray(values, np.float64)
  if not values.size:
    return None
  std = float(np.std(values, ddof=1)) if values.size > 1 else None
  return Stat(float(np.mean(values)), std, values.size)


def fmt(s: Stat | None) -> str:
  """A cell of a markdown table (``"—"`` when missing)."""
  return "—" if s is None else s.format()


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
  """What a reported number is about; ``condition`` holds (key, value) pairs."""

  condition: tuple
  dataset: str
  bias_ratio: float
  mode: str
  method: str


@dataclasses.dataclass(frozen=True)
class Selection:
  """A cell's chosen hyperparameters and their runs (one per seed);
  ``candidates``: every setting's (hparams, score, seed count), best first."""

  cell: Cell
  hparams: tuple
  runs: dict[int, Record]
  candidates: tuple

  def metric(self, name: str) -> Stat | None:
    values = [getattr(r, name) for r in self.runs.values()]
    if any(v is None for v in values):
      return None
    return stat(values)


def split_keys(records: Sequence[Record]) -> tuple[list[str], list[str]]:
  """(hyperparameter keys, condition keys): the unignored keys that vary."""
  keys = sorted({k for r in records for k in r.settings} - IGNORED_KEYS)
  varying = [k for k in keys
             if len({repr(r.settings.get(k)) for r in records}) > 1]
  hparams = [k for k in varying
             if k in HPARAM_KEYS or k.split(".")[0] in METHODS]
  return hparams, [k for k in varying if k not in hparams]


def condition_of(r: Record, ckeys: Sequence[str]) -> tuple:
  control = (("control", r.control),) if r.control else ()
  return tuple((k, r.settings.get(k)) for k in ckeys) + control


def candidates(records: Sequence[Record]
               ) -> dict[Cell, dict[tuple, dict[int, Record]]]:
  """``{cell: {hyperparameters: {seed: run}}}``; two runs of one setting and
  seed are an error."""
  hkeys, ckeys = split_keys(records)
  table: dict[Cell, dict[tuple, dict[int, Record]]] = {}
  for r in records:
    cell = Cell(condition_of(r, ckeys), r.dataset, r.bias_ratio, r.mode,
                r.method)
    h = tuple((k, r.settings.get(k)) for k in hkeys)
    seeds = table.setdefault(cell, {}).setdefault(h, {})
    if r.seed in seeds:
      raise ValueError(f"Two runs of the same setting and seed {r.seed}: "
                       f"{seeds[r.seed].path} and {r.path}.")
    seeds[r.seed] = r
  return table


def complete_seeds(records: Sequence[Record]) -> list[Record]:
  """The runs of the seeds every candidate setting of their cell ran (a sweep
  stopped early leaves some settings short of seeds)."""
  kept = set()
  for options in candidates(records).values():
    common = set.intersection(*map(set, options.values()))
    kept |= {id(r) for runs in options.values() for s, r in runs.items()
             if s in common}
  return [r for r in records if id(r) in kept]


def select(records: Sequence[Record]) -> dict[Cell, Selection]:
  """Per cell, the hyperparameters with the best mean selection WA over the
  seeds all candidates share (each its own if none); ties: first by repr."""
  out = {}
  for cell, options in candidates(records).items():
    common = set.intersection(*(set(runs) for runs in options.values()))

    def score(runs: dict[int, Record]) -> float:
      seeds = common or set(runs)
      return stat([runs[s].selection_wa for s in seeds]).mean

    scored = sorted(((-score(runs), repr(h), h, runs)
                     for h, runs in options.items()),
                    key=lambda t: (t[0], t[1]))
    _, _, best, runs = scored[0]
    out[cell] = Selection(
        cell=cell, hparams=best, runs=dict(sorted(runs.items())),
        candidates=tuple((h, -score, len(rs)) for score, _, h, rs in scored))
  return out


def average(selections: dict[Cell, Selection], cells: Sequence[Cell],
            metric: str) -> Stat | None:
  """Mean and sample std over seeds of the per-seed average over ``cells``
  (the seeds all have); None if a cell or the metric is missing."""
  if not cells:
    return None
  chosen = [selections.get(c) for c in cells]
  if any(s is None for s in chosen):
    return None
  seeds = set.intersection(*(set(s.runs) for s in chosen))
  per_seed = []
  for seed in sorted(seeds):
    values = [getattr(s.runs[seed], metric) for s in chosen]
    if any(v is None for v in values):
      return None
    per_seed.append(sum(values) / len(values))
  return stat(per_seed)


def conditions(selections: dict[Cell, Selection]) -> list[tuple]:
  return sorted({c.condition for c in selections}, key=repr)


def datasets_and_ratios(selections: dict[Cell, Selection], condition: tuple
                        ) -> dict[str, list[float]]:
  """``{dataset: [ratios]}`` present under ``condition``, sorted."""
  out: dict[str, set] = {}
  for c in selections:
    if c.condition == condition:
      out.setdefault(c.dataset, set()).add(c.bias_ratio)
  return {d: sorted(r) for d, r in sorted(out.items())}
