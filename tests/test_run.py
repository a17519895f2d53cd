"""A run's set-up: every host must have loaded the same data; an in-process
sweep loads each data setting once."""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
import pytest
from jax.experimental import multihost_utils

from ffr_jax import experiments
from ffr_jax.data import datasets
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples
from ffr_jax.reporting import results as results_lib
from ffr_jax.training import run as run_lib

from conftest import ROOT

SPEC = DatasetSpec("toy", ("a", "b"), ("x", "y"),
                   ((0, 0), (0, 1), (1, 0), (1, 1)), (0, 1))


def _splits(paths):
  ex = Examples.from_lists(paths, [0, 1], [0, 1])
  return DatasetSplits(spec=SPEC, train=ex, val=ex, test=ex)


def _digest(paths):
  """What a host with ``paths`` contributes to the all-gather."""
  got = {}

  def capture(mine):
    got["digest"] = mine
    return np.stack([mine, mine])
  with pytest.MonkeyPatch.context() as m:
    m.setattr(jax, "process_count", lambda: 2)
    m.setattr(multihost_utils, "process_allgather", capture)
    run_lib.check_same_data_on_every_host(_splits(paths))
  return got["digest"]


def _two_hosts(monkeypatch, other_host_paths):
  """Pretends to be host 0 of 2; host 1 listed ``other_host_paths``."""
  theirs = _digest(other_host_paths)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda mine: np.stack([mine, theirs]))


def test_hosts_that_listed_other_files_fail_clearly(monkeypatch):
  _two_hosts(monkeypatch, ["/d/a.png", "/d/c.png"])
  with pytest.raises(ValueError, match=r"Hosts \[1\] loaded other dataset splits"):
    run_lib.check_same_data_on_every_host(_splits(["/d/a.png", "/d/b.png"]))


def test_hosts_with_the_same_files_under_other_mounts_agree(monkeypatch):
  _two_hosts(monkeypatch, ["/mnt/x/a.png", "/mnt/x/b.png"])
  run_lib.check_same_data_on_every_host(_splits(["/d/a.png", "/d/b.png"]))


def test_an_in_process_sweep_loads_each_data_setting_once(tmp_path, monkeypatch):
  """Runs that differ only in method (or seed, lr) reuse the data loaded for
  an earlier run, also after runs of another mode or bias ratio, which load
  their own."""
  sweep = ml_collections.ConfigDict({
      "config": str(ROOT / "configs" / "demo.py") + ":smoke", "fixed": (),
      "grid": ({"mode": ("none",), "method": ("erm", "groupdro")},
               {"mode": ("usb",), "method": ("erm", "dfr")},
               {"mode": ("usb",), "method": ("erm",), "data.bias_ratio": (0.95,)},
               {"mode": ("none",), "method": ("dfr",)})})
  runs = experiments.expand(sweep, str(tmp_path))
  loaded, seen = [], []
  real_load = datasets.load_dataset
  monkeypatch.setattr(datasets, "load_dataset",
                      lambda c: loaded.append(c.bias_ratio) or real_load(c))

  def fake_train(config, workdir, should_stop=None, reuse_data=None):
    """What train_and_evaluate does before training: load the run's data."""
    config = datasets.resolve_roots(config, workdir)
    seen.append(run_lib.load_run_data(config, [str(config.mode)], reuse_data))
    results_lib.write_json_atomic(
        os.path.join(workdir, results_lib.RESULTS_FILE), {})
  monkeypatch.setattr(run_lib, "train_and_evaluate", fake_train)
  outcomes = experiments.execute(runs, "inprocess", log=lambda s: None)
  assert [o.status for o in outcomes] == ["done"] * 6
  assert loaded == [0.99, 0.99, 0.95]
  assert seen[0] is seen[1] and seen[2] is seen[3] and seen[1] is not seen[2]
  assert seen[5] is seen[0]
  assert seen[0].synthetic is None and seen[2].synthetic is not None



REAL_DATA_CONFIGS = ("spuco", "celeba_hq", "utk_face", "waterbirds", "celeba", "folder")


@pytest.mark.parametrize("name", REAL_DATA_CONFIGS)
def test_real_data_without_pretrained_weights_stops_before_training(name, tmp_path):
  from ffr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(str(ROOT / "configs" / f"{name}.py"))
  config_lib.apply_overrides(config, [("data.root", str(tmp_path))])
  with pytest.raises(ValueError, match="hf-hub:timm/resnet50.tv_in1k .* local "
                     r"\.pth/\.safetensors file, or to 'none' to train from scratch"):
    run_lib.validate_config(config)
  config_lib.apply_overrides(config, [("model.pretrained", "none")])
  run_lib.validate_config(config)  # from scratch when asked for
  model = object()
  assert run_lib.pretrained_variables(config, model) == (None, "fresh")
