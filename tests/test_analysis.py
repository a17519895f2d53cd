"""The analysis tools: RISE on a known answer, the probe, sampling, failures."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ffr_jax.analysis import embeddings as emb_lib
from ffr_jax.analysis import rise as rise_lib
from ffr_jax.analysis import run_loading
from ffr_jax.analysis import samples as samples_lib
from ffr_jax.data.types import REAL, SYNTHETIC

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.py"
SIZE = 32
QUADRANT = np.zeros((SIZE, SIZE), bool)
QUADRANT[:SIZE // 2, :SIZE // 2] = True


def _quadrant_score(aux, images):
  """A hand-made "model": class 0's score is the top-left quadrant's mean."""
  del aux
  q = images[:, :SIZE // 2, :SIZE // 2, :].mean(axis=(1, 2, 3))
  return jnp.stack([q, 1.0 - q], axis=-1)


QUADRANT_CFG = rise_lib.RiseConfig(num_masks=2000, grid=4, p=0.5, batch=500)


# ---------------------------------------------------------------------------
# RISE.


def test_masks_are_smooth_binary_draws_with_probability_p():
  import jax  # pylint: disable=g-import-not-at-top
  masks = np.asarray(rise_lib.make_masks(jax.random.key(0), 512, 8, 0.3,
                                         SIZE, SIZE))
  assert masks.shape == (512, SIZE, SIZE)
  assert masks.min() >= 0.0 and masks.max() <= 1.0
  assert abs(masks.mean() - 0.3) < 0.03
  # Bilinear upsampling: values between 0 and 1 occur (no hard cell edges).
  assert ((masks > 0.05) & (masks < 0.95)).mean() > 0.2


def test_rise_lights_up_the_only_region_the_model_looks_at():
  image = np.ones((SIZE, SIZE, 3), np.float32)
  maps = rise_lib.rise_saliency(_quadrant_score, None, image, QUADRANT_CFG)
  assert maps.shape == (2, SIZE, SIZE)
  looked_at = maps[0]
  # Uniform saliency would put 25% of the mass in the quadrant.
  assert rise_lib.region_mass(looked_at, QUADRANT) > 0.5
  peak = np.unravel_index(np.argmax(looked_at), looked_at.shape)
  assert QUADRANT[peak]
  assert looked_at[QUADRANT].mean() > looked_at[~QUADRANT].mean() + 0.05
  # Class 1 falls as the quadrant shows: its map avoids the quadrant.
  assert rise_lib.region_mass(maps[1], QUADRANT) < 0.15


_SHARDED = """
import jax
jax.config.update("jax_num_cpu_devices", 4)
import jax.numpy as jnp
import numpy as np
from ffr_jax.analysis import rise
from ffr_jax.mesh import make_shardings

def score(aux, images):
  q = images[:, :16, :16, :].mean(axis=(1, 2, 3))
  return jnp.stack([q, 1.0 - q], axis=-1)

cfg = rise.RiseConfig(num_masks=2000, grid=4, p=0.5, batch=500)
image = np.ones((32, 32, 3), np.float32)
one = rise.rise_saliency(score, None, image, cfg,
                         make_shardings(jax.devices()[:1]))
four = rise.rise_saliency(score, None, image, cfg, make_shardings())
assert len(jax.devices()) == 4
np.testing.assert_allclose(one, four, rtol=1e-5, atol=1e-6)
print("OK")
"""


def test_rise_sharded_over_four_devices_equals_one_device():
  proc = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True,
                        text=True, cwd=ROOT, timeout=300, env=dict(os.environ))
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_rise_config_rejects_bad_settings():
  with pytest.raises(ValueError, match="p must lie"):
    rise_lib.RiseConfig(p=0.0)
  with pytest.raises(ValueError, match="num_masks"):
    rise_lib.RiseConfig(num_masks=0)


# ---------------------------------------------------------------------------
# Embedding numbers.


def _two_sources(shift: float, n: int = 200, dim: int = 16, groups: int = 4):
  rng = np.random.default_rng(0)
  g = np.tile(np.arange(groups), n // groups)
  centres = rng.normal(0, 5, (groups, dim))
  real = centres[g] + rng.normal(size=(n, dim))
  syn = centres[g] + rng.normal(size=(n, dim))
  syn[:, 0] += shift
  x = np.concatenate([real, syn])
  source = np.concatenate([np.full(n, REAL), np.full(n, SYNTHETIC)])
  return x, source, np.concatenate([g, g])


def test_probe_separates_separable_embeddings():
  x, source, groups = _two_sources(shift=6.0)
  probe = emb_lib.probe_accuracy(x, source, groups)
  assert probe.accuracy > 0.97
  assert probe.per_source == 200


def test_probe_is_at_chance_on_same_distribution_and_identical_embeddings():
  x, source, groups = _two_sources(shift=0.0)
  assert abs(emb_lib.probe_accuracy(x, source, groups).accuracy - 0.5) < 0.1
  n = len(x) // 2
  same = np.concatenate([x[:n], x[:n]])  # every synthetic row = a real row
  assert emb_lib.probe_accuracy(same, source, groups).accuracy < 0.6


def test_probe_balances_sources_within_groups():
  # Group 0 is all real, group 1 all synthetic: group identity would give the
  # source away, so balancing must drop both and leave too little.
  x = np.random.default_rng(0).normal(size=(40, 4))
  source = np.repeat([REAL, SYNTHETIC], 20)
  groups = np.repeat([0, 1], 20)
  with pytest.raises(ValueError, match="at least 2"):
    emb_lib.probe_accuracy(x, source, groups)


def test_centroid_distance_is_small_for_one_distribution_large_for_two():
  names = [f"g{i}" for i in range(4)]
  x, source, groups = _two_sources(shift=0.0)
  near = emb_lib.centroid_distances(x, source, groups, names)
  x, source, groups = _two_sources(shift=6.0)
  far = emb_lib.centroid_distances(x, source, groups, names)
  assert set(near["per_group"]) == set(names)
  assert near["mean"] < 0.3 < 1.0 < far["mean"]
  # Groups sit 5 sd apart: the reference scale dwarfs a same-source gap.
  assert near["reference_group_distance"] > 3.0


# ---------------------------------------------------------------------------
# Which synthetic images; finding runs.


def _demo_config(tmp_path):
  spec = importlib.util.spec_from_file_location("demo_cfg", DEMO)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  config.data.root = str(tmp_path / "real")
  config.data.synthetic_root = str(tmp_path / "synthetic")
  return config


def _run_info(tmp_path, config, used: int) -> run_loading.RunInfo:
  from ffr_jax.demo import DEMO as demo_def  # pylint: disable=g-import-not-at-top
  results = {"mode": "asb", "method": "erm",
             "stages": {"train": {"dir": "train"}}, "stage_order": ["train"],
             "synthetic_per_group": {f"y={y},b={b}": used
                                     for y, b in demo_def.spec.groups},
             "config": config.to_dict()}
  return run_loading.RunInfo("asb-erm", str(tmp_path), str(tmp_path), results,
                             config)


def test_heldout_synthetic_images_skip_what_training_used(tmp_path):
  from ffr_jax.generation import factory as generate  # pylint: disable=g-import-not-at-top
  config = _demo_config(tmp_path)
  run = _run_info(tmp_path, config, used=2)
  spec = samples_lib.datasets.get_dataset("demo").spec
  generate.generate_synthetic(config, spec, 5, config.data.synthetic_root,
                              show_progress=False, log_summary=False)
  ex, choice, root = samples_lib.synthetic_sample([run], spec, 3, "auto",
                                                  str(tmp_path / "out"))
  assert choice == "heldout" and root == config.data.synthetic_root
  names = sorted(os.path.basename(p) for p in ex.path)
  assert names == sorted(["000002.png", "000003.png", "000004.png"] * 8)
  with pytest.raises(ValueError, match="fewer than 4 unseen"):
    samples_lib.synthetic_sample([run], spec, 4, "heldout", str(tmp_path))
  # auto with too few unseen images: the procedural generator makes new ones.
  ex, choice, root = samples_lib.synthetic_sample([run], spec, 4, "auto",
                                                  str(tmp_path / "out"))
  assert choice == "generate" and root.startswith(str(tmp_path / "out"))
  assert all(ex.count(*g) == 4 for g in spec.groups)


@pytest.mark.parametrize("mode,expect", [
    ("none", "Mode none trains on no synthetic images, and .* has too few for "
             "--images=sample:1: pass --nowith_synthetic to explain real images only."),
    ("asb", "--synthetic=generate .* Or pass --nowith_synthetic")])
def test_rise_without_synthetic_images_names_nowith_synthetic(tmp_path, monkeypatch,
                                                              mode, expect):
  from ffr_jax.analysis import reports  # pylint: disable=g-import-not-at-top
  from ffr_jax.data.types import Examples  # pylint: disable=g-import-not-at-top
  config = _demo_config(tmp_path)
  config.generate.generator = "stable_diffusion"  # no cheap held-out images
  info = _run_info(tmp_path, config, used=0)
  info.results["mode"] = mode
  spec = samples_lib.datasets.get_dataset("demo").spec
  run = run_loading.LoadedRun(info=info, stage="train", spec=spec,
                              model=None, variables=None)
  monkeypatch.setattr(reports, "_load_all", lambda *args: [run])
  monkeypatch.setattr(samples_lib, "real_test_sample", lambda *a: Examples.empty())
  with pytest.raises(ValueError, match=expect):
    reports.rise_report([str(tmp_path)], str(tmp_path / "out"), shardings=object())


def test_find_runs_fails_clearly_without_a_finished_run(tmp_path):
  with pytest.raises(FileNotFoundError, match="No finished run"):
    run_loading.find_runs(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="No such workdir"):
    run_loading.find_runs(str(tmp_path / "missing"))


def _results_without_checkpoints(tmp_path) -> pathlib.Path:
  run_dir = tmp_path / "run"
  (run_dir / "train").mkdir(parents=True)
  config = _demo_config(tmp_path)
  with open(run_dir / "results.json", "w") as f:
    json.dump(_run_info(run_dir, config, 0).results, f)
  return run_dir


def test_load_run_fails_clearly_without_checkpoints(tmp_path):
  run_dir = _results_without_checkpoints(tmp_path)
  (run,) = run_loading.find_runs(str(run_dir))
  assert run.name == "asb-erm"
  with pytest.raises(FileNotFoundError, match="No checkpoint in"):
    run_loading.load_run(run, shardings=None)
  with pytest.raises(ValueError, match="no stage 'stage1'"):
    run_loading.resolve_stage(run, "stage1")
  # Nothing was created on the way.
  assert not (run_dir / "train" / "checkpoints").exists()


@pytest.mark.parametrize("command", ["embeddings", "rise"])
def test_commands_fail_clearly_on_unfinished_workdirs(tmp_path, command):
  empty = tmp_path / "empty"
  empty.mkdir()
  no_ckpt = _results_without_checkpoints(tmp_path)
  for workdir, message in ((empty, "No finished run"),
                           (no_ckpt, "No checkpoint in")):
    proc = subprocess.run(
        [sys.executable, "-m", "ffr_jax.analyze", command,
         f"--workdir={workdir}", f"--out={tmp_path / 'out'}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr


def test_command_needs_a_known_subcommand(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "ffr_jax.analyze", "tsne", f"--workdir={tmp_path}"],
      capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert proc.returncode != 0
  assert "embeddings or rise" in proc.stderr


# ---------------------------------------------------------------------------
# End to end on a trained smoke run (slow: trains first).


@pytest.mark.slow
def test_commands_on_a_trained_smoke_run(tmp_path):
  workdir = tmp_path / "runs"
  train = subprocess.run(
      [sys.executable, "-m", "ffr_jax.main", f"--config={DEMO}:smoke",
       f"--workdir={workdir}", "--config.mode=none,usb,asb,ffr"],
      capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert train.returncode == 0, train.stderr[-3000:]
  out = tmp_path / "analysis"
  for args in (["embeddings", "--per_group=20"],
               ["rise", "--images=sample:1", "--rise_masks=256",
                "--groups=big dog/indoors,small dog/outdoors"],
               ["embeddings", "--stage=stage1", f"--workdir={workdir}/runs/mode=ffr/method=erm",
                f"--out={out}/stage1"]):
    extra = [] if any(a.startswith("--workdir") for a in args) else [
        f"--workdir={workdir}", f"--out={out}"]
    proc = subprocess.run([sys.executable, "-m", "ffr_jax.analyze", *args,
                           *extra], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.load(open(out / "embeddings.json"))
  assert list(report["runs"]) == ["none-erm", "usb-erm", "asb-erm", "ffr-erm"]
  for r in report["runs"].values():
    assert 0.0 <= r["probe_accuracy"] <= 1.0
    assert r["synthetic_choice"] == "generate"  # smoke roots hold no spare images
    assert len(r["centroid_distance"]) == 8
  rise_report = json.load(open(out / "rise.json"))
  assert len(rise_report["images"]) == 4  # 2 groups x (real, synthetic)
  maps = np.load(out / "rise.npz")["maps"]
  assert maps.shape == (4, 4, 32, 32) and np.isfinite(maps).all()
  stage1 = json.load(open(out / "stage1" / "embeddings.json"))
  assert stage1["runs"]["ffr-erm"]["stage"] == "stage1"


def test_analyses_of_dfr_and_afr_runs_use_the_refit_head(tmp_path):
  # The model a DFR or AFR run reports is its backbone with the refit head:
  # that model, scored as RISE scores it, reproduces the run's test numbers.
  from ffr_jax.data import images as images_lib  # pylint: disable=import-outside-toplevel
  from ffr_jax.data.pipeline import normalize  # pylint: disable=import-outside-toplevel
  from ffr_jax.mesh import make_shardings  # pylint: disable=import-outside-toplevel
  train = subprocess.run(
      [sys.executable, "-m", "ffr_jax.main", f"--config={DEMO}:smoke",
       f"--workdir={tmp_path}", "--config.mode=none", "--config.method=dfr,afr"],
      capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert train.returncode == 0, train.stderr[-3000:]
  for info in run_loading.find_runs(str(tmp_path)):
    run = run_loading.load_run(info, make_shardings())
    assert run.head is not None, info.name
    test = samples_lib.real_test_sample(info.config, per_group=10**6)
    images = normalize(jnp.asarray(np.stack(
        [images_lib.decode(p, SIZE) for p in test.path])))
    pred = np.argmax(np.asarray(jax.jit(rise_lib.model_score_fn(
        run.model, run.head))(run.variables, images)), axis=1)
    correct = pred == np.asarray(test.y)
    worst = min(correct[(test.y == y) & (test.b == b)].mean()
                for y, b in set(zip(test.y.tolist(), test.b.tolist())))
    assert worst == pytest.approx(info.results["test"]["worst_group_acc"])
    own = np.argmax(np.asarray(jax.jit(rise_lib.model_score_fn(run.model))(
        run.variables, images)), axis=1)
    assert (own != pred).any(), "the refit head should change some prediction"
