"""Damaged checkpoints: set aside with a warning, the next older one restored,
the stage retrained from its start when none is left; every rerun ends with
the numbers of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from ffr_jax import models
from ffr_jax.mesh import make_shardings
from ffr_jax.reporting.writer import MetricWriter
from ffr_jax.training import checkpoints
from ffr_jax.training import stage as stage_lib
from tests import test_stage_loop as loop


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """An uninterrupted 2-epoch stage ("whole": checkpoints 3 and 6) and one
  stopped at step 4 ("cut": checkpoints 3 and 4)."""
  root = tmp_path_factory.mktemp("runs")
  plan = loop._plan(root)  # pylint: disable=protected-access
  whole, best = loop._run(root, plan, folder="whole")  # pylint: disable=protected-access
  with pytest.raises(stage_lib.StageInterrupted):
    stage_lib.run_stage(
        plan, models.create_model("tiny", 2), loop._evals(root),  # pylint: disable=protected-access
        make_shardings(), MetricWriter(str(root / "off"), enabled=False),
        str(root / "cut"), loop.OPTIONS, should_stop=lambda step: step == 4)
  return root, plan, whole, jax.device_get(best)


def _damage(step_dir, how: str, item: str) -> None:
  """Damages the ``item`` (state or best) of a checkpoint, or its meta."""
  if how == "truncated data":
    # The largest array file of the item, cut in half (a torn write).
    files = [p for p in (step_dir / item).rglob("d/*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 2)
  elif how == "missing metadata":
    os.remove(step_dir / "meta" / "metadata")
  elif how == "garbage metadata":
    (step_dir / item / "_METADATA").write_bytes(b"\xe8\x00\xff not json")
  else:
    raise AssertionError(how)


def _rerun(root, plan, folder, source, damaged_steps, how, item):
  shutil.copytree(root / source, root / folder)
  for step in damaged_steps:
    _damage(root / folder / "checkpoints" / str(step), how, item)
  return loop._run(root, plan, folder=folder)  # pylint: disable=protected-access


def _assert_equal(got, want, got_best, want_best):
  assert got.history == want.history
  assert got.best_epoch == want.best_epoch
  assert got.metrics == want.metrics
  np.testing.assert_array_equal(
      jax.device_get(got_best["params"]["fc"]["kernel"]),
      want_best["params"]["fc"]["kernel"])


@pytest.mark.parametrize("how", [
    "truncated data",
    pytest.param("missing metadata", marks=pytest.mark.slow),
    pytest.param("garbage metadata", marks=pytest.mark.slow)])
def test_a_running_stage_resumes_from_the_checkpoint_before_a_damaged_one(
    runs, how, caplog):
  root, plan, whole, whole_best = runs
  folder = f"running {how}"
  result, best = _rerun(root, plan, folder, "cut", [4], how, "state")
  _assert_equal(result, whole, best, whole_best)
  ckpts = root / folder / "checkpoints"
  # Set aside, never deleted; Orbax lists the retrained steps only.
  assert (ckpts / "4.damaged").is_dir()
  assert sorted(p.name for p in ckpts.iterdir()) == ["3", "4.damaged", "6"]
  warned = [r.getMessage() for r in caplog.records if "does not restore" in
            r.getMessage()]
  assert len(warned) == 1 and str(ckpts / "4") in warned[0], warned


@pytest.mark.parametrize("how", [
    "truncated data",
    pytest.param("missing metadata", marks=pytest.mark.slow),
    pytest.param("garbage metadata", marks=pytest.mark.slow)])
def test_a_finished_stage_with_a_damaged_checkpoint_gives_the_same_result(
    runs, how):
  """Retrained from the checkpoint before (reused where the damage is in a
  part a finished stage does not read: meta)."""
  root, plan, whole, whole_best = runs
  folder = f"finished {how}"
  result, best = _rerun(root, plan, folder, "whole", [6], how, "best")
  _assert_equal(result, whole, best, whole_best)
  saved = json.load(open(root / folder / stage_lib.RESULT_FILE))
  assert saved["history"] == whole.history
  assert saved["fingerprint"] == plan.fingerprint


def test_a_finished_stage_whose_checkpoints_are_all_damaged_starts_again(
    runs):
  root, plan, whole, whole_best = runs
  folder = "finished, all damaged"
  result, best = _rerun(root, plan, folder, "whole", [3, 6], "truncated data",
                        "best")
  _assert_equal(result, whole, best, whole_best)
  names = sorted(p.name for p in (root / folder / "checkpoints").iterdir())
  assert names == ["3", "3.damaged", "6", "6.damaged"]


def test_analysis_of_a_damaged_checkpoint_is_one_line_and_moves_nothing(runs):
  root, plan, _, _ = runs
  folder = root / "analysis"
  shutil.copytree(root / "whole", folder)
  _damage(folder / "checkpoints" / "6", "garbage metadata", "best")
  with pytest.raises(checkpoints.DamagedCheckpoint,
                     match=r"checkpoints/6/best does not restore "
                           r"\(UnicodeDecodeError.*rerun the training"):
    stage_lib.restore_best_variables(
        str(folder), models.create_model("tiny", 2), plan.image_size,
        plan.seed, make_shardings())
  assert (folder / "checkpoints" / "6").is_dir()


def test_a_refused_read_is_the_disks_fault_not_damage():
  from ffr_jax.training import checkpoints  # pylint: disable=import-outside-toplevel
  text = ('PERMISSION_DENIED: Error opening "/w/ckpt/6/state/d/x" '
          "[os_error_code='13']")
  wrapped = ValueError('Failed writing: "/w/ckpt/6/state/d/x" ' + text)
  with pytest.raises(ValueError):
    checkpoints._raise_disk_error(wrapped)  # pylint: disable=protected-access
