"""JTT: identification, error set, upsampling, and a run's record."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ffr_jax.data.types import Examples
from ffr_jax.training import jtt
from test_plan import _config, _plans

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_jtt_trains_twice_from_one_starting_point():
  plans = _plans(_config(mode="ffr", method="jtt", **{"jtt.epochs_id": 2}))
  assert [p.name for p in plans] == ["stage1", "stage2_id", "stage2"]
  identify, final = plans[1], plans[2]
  assert (identify.method, identify.epochs, identify.selection) == ("erm", 2, "last")
  assert identify.init == final.init == f"stage:{plans[0].fingerprint}"
  assert final.method == "jtt" and final.selection == "best_val"
  # Another upsampling factor reuses the identification stage.
  other = _plans(_config(mode="ffr", method="jtt", **{"jtt.epochs_id": 2,
                                                      "jtt.upsample": 7}))
  assert other[1].fingerprint == identify.fingerprint
  assert other[2].fingerprint != final.fingerprint



def test_jtt_settings_are_checked_before_any_work():
  with pytest.raises(ValueError, match="jtt.upsample=0"):
    _plans(_config(mode="none", method="jtt", **{"jtt.upsample": 0}))


def test_the_error_set_is_what_the_identification_model_gets_wrong():
  train = Examples.from_lists([f"/x/{i}.png" for i in range(5)],
                              [0, 1, 1, 0, 1], [0, 0, 1, 1, 0])
  assert jtt.error_set(np.array([0, 0, 1, 1, 1]), train).tolist() == [1, 3]


@pytest.mark.slow
def test_jtt_and_afr_run_with_every_mode_and_record_what_they_did(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "ffr_jax.main", f"--config={ROOT}/configs/demo.py:smoke",
       f"--workdir={tmp_path}", "--config.mode=none,ffr",
       "--config.method=jtt,afr"], cwd=ROOT, capture_output=True, text=True,
      timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for mode in ("none", "ffr"):
    run = tmp_path / "runs" / f"mode={mode}"
    j = json.load(open(run / "method=jtt" / "results.json"))
    assert j["jtt"]["error_set_size"] == sum(j["jtt"]["error_set_per_group"].values()) > 0
    assert j["stage_order"][-2:] == [j["stage_order"][-1] + "_id", j["stage_order"][-1]]
    a = json.load(open(run / "method=afr" / "results.json"))
    assert a["afr"]["gamma"] in a["afr"]["gamma_grid"]
    assert a["afr"]["erm_size"] + a["afr"]["heldout_size"] == j["jtt"]["train_size"]
    assert a["selection"]["source"] == "val"


@pytest.mark.slow
def test_stop_checks_see_step_ids_that_only_grow_across_the_programme(tmp_path):
  # JAX's multi-host preemption sync point needs them: stages, the error-set
  # pass between them, and DFR-style after steps all continue one count.
  from ffr_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from ffr_jax.training import run as run_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config_file(f"{ROOT}/configs/demo.py:smoke")
  config_lib.apply_overrides(config, [("mode", "ffr"), ("method", "jtt")])
  seen = []
  run_lib.train_and_evaluate(config, str(tmp_path),
                             should_stop=lambda step: seen.append(step) or False)
  assert seen == sorted(seen) and len(seen) > 30


@pytest.mark.parametrize("mode", ["stage1_only", "stage2_then_1"])
@pytest.mark.parametrize("method", ["jtt", "afr"])
def test_jtt_and_afr_refuse_modes_that_end_with_synthetic_pretraining(mode, method):
  with pytest.raises(ValueError, match="synthetic pretraining"):
    _plans(_config(mode=mode, method=method))


@pytest.mark.slow
def test_the_error_set_is_kept_so_a_resume_anywhere_trains_on_the_same_set(tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel
  from ffr_jax import config as config_lib  # pylint: disable=import-outside-toplevel
  from ffr_jax.training import run as run_lib  # pylint: disable=import-outside-toplevel
  config = config_lib.load_config_file(f"{ROOT}/configs/demo.py:smoke")
  config_lib.apply_overrides(config, [("mode", "none"), ("method", "jtt")])
  first = run_lib.train_and_evaluate(config, str(tmp_path))
  (kept,) = (tmp_path / "stages").glob(f"train_id-*/{jtt.ERROR_SET_FILE}")
  assert len(json.loads(kept.read_text())) == first["jtt"]["error_set_size"]
  # Another machine would recompute it; the kept one decides.
  kept.write_text("[0, 1, 2]")
  (tmp_path / "results.json").unlink()
  shutil.rmtree(tmp_path / first["stages"]["train"]["dir"])
  again = run_lib.train_and_evaluate(config, str(tmp_path))
  assert again["jtt"]["error_set_size"] == 3
