"""Stage plans: one source of truth for what a stage depends on."""

from __future__ import annotations

import dataclasses
import os

import pytest

from ffr_jax import config as config_lib
from ffr_jax.data import compose
from ffr_jax.data.types import Examples
from ffr_jax.training import spec as plan_lib


def _config(**overrides):
  c = config_lib.base_config()
  c.data.name = "demo"
  c.update_from_flattened_dict(overrides)
  return c


def _plans(config, mode=None):
  config.mode = mode or config.mode
  return list(plan_lib.plan_run(config).stages)


def test_two_plans_differing_only_in_the_lr_schedule_differ():
  constant = _plans(_config(mode="ffr"))
  cosine = _plans(_config(mode="ffr", **{"train.lr_schedule": "cosine"}))
  assert dataclasses.replace(constant[0], lr_schedule="cosine") == cosine[0]
  for a, b in zip(constant, cosine):
    assert a.fingerprint != b.fingerprint
  with pytest.raises(ValueError, match="lr_schedule='step'"):
    _plans(_config(mode="ffr", **{"train.lr_schedule": "step"}))


def test_ffr_stage1_is_one_plan_for_every_method_and_stage1_only():
  first = {m: _plans(_config(mode="ffr", method=m))[0].fingerprint
           for m in ("erm", "groupdro", "resampling", "dfr")}
  assert len(set(first.values())) == 1
  assert _plans(_config(mode="stage1_only"))[0].fingerprint == first["erm"]
  # Settings only stage 2 reads leave stage 1 alone ...
  for key, value in (("groupdro.eta", 0.5), ("train.lr", 0.1),
                     ("train.epochs", 3), ("train.freeze_bn", True),
                     ("dfr.num_refits", 2)):
    other = _plans(_config(mode="ffr", method="groupdro", **{key: value}))
    assert other[0].fingerprint == first["erm"], key
  # ... and change stage 2's plan when it reads them.
  eta = _plans(_config(mode="ffr", method="groupdro", **{"groupdro.eta": 0.5}))
  base = _plans(_config(mode="ffr", method="groupdro"))
  assert eta[1].fingerprint != base[1].fingerprint
  assert eta[1].method_settings == (("eta", 0.5), ("size_adjustment", 0.0))


def test_one_training_planned_by_two_runs_is_one_stage_folder():
  # stage2_then_1 starts with none's stage; DFR's backbone is ERM's stage.
  none = _plans(_config(mode="none"))
  assert _plans(_config(mode="stage2_then_1"))[0].folder == none[0].folder
  for mode in ("none", "ffr", "usb"):
    erm = _plans(_config(mode=mode))
    dfr = _plans(_config(mode=mode, method="dfr"))
    assert [p.folder for p in dfr] == [p.folder for p in erm], mode
  # The runs themselves still differ.
  assert (plan_lib.plan_run(_config(mode="ffr", method="dfr")).fingerprint
          != plan_lib.plan_run(_config(mode="ffr")).fingerprint)


def test_a_stage_depends_on_the_stage_it_continues():
  a = _plans(_config(mode="ffr"))
  b = _plans(_config(mode="ffr", **{"stage1.lr": 3e-4}))
  assert a[0].fingerprint != b[0].fingerprint
  assert a[1].init == f"stage:{a[0].fingerprint}" != b[1].init
  assert a[1].fingerprint != b[1].fingerprint


def test_speed_only_settings_leave_every_plan_alone():
  base = [p.fingerprint for p in _plans(_config(mode="ffr"))]
  defaults = config_lib.flatten(_config())
  for key in sorted(config_lib.SPEED_ONLY_KEYS):
    old = defaults[key]
    value = (not old if isinstance(old, bool) else
             "/elsewhere" if isinstance(old, str) else old + 7)
    assert [p.fingerprint for p in _plans(_config(mode="ffr", **{key: value}))
            ] == base, key


def test_authors_learning_rates_per_mode():
  assert _plans(_config(mode="asb"))[0].lr == 1e-4
  assert _plans(_config(mode="none"))[0].lr == 1e-3
  ffr = _plans(_config(mode="ffr"))
  assert (ffr[0].lr, ffr[1].lr) == (1e-4, 1e-3)
  assert _plans(_config(mode="asb", **{"train.lr": 0.01}))[0].lr == 0.01


def test_the_data_digest_is_the_same_under_another_root(tmp_path):
  def examples(root):
    return Examples.from_lists([f"{root}/a/1.png", f"{root}/b/2.png"], [0, 1],
                               [1, 0])
  here = plan_lib.examples_digest(examples("/data/x"), ["/data/x"])
  there = plan_lib.examples_digest(examples("/mnt/copy"), ["/mnt/copy"])
  assert here == there
  relabelled = Examples.from_lists(["/data/x/a/1.png", "/data/x/b/2.png"],
                                   [0, 0], [1, 0])
  assert plan_lib.examples_digest(relabelled, ["/data/x"]) != here


def test_epoch0_is_a_candidate_only_for_a_continuing_stage():
  plans = _plans(_config(mode="ffr", **{"train.select_epoch0": True}))
  assert not plans[0].epoch0_candidate and plans[1].epoch0_candidate


@pytest.mark.parametrize("mode", sorted(compose.MODES))
def test_every_mode_plans_without_data(mode):
  plans = _plans(_config(), mode)
  assert [p.name for p in plans] == [s.name for s in compose.describe(mode)]


def _synthetic_pool(root, pixel: int) -> Examples:
  """A one-image generated pool under ``root`` whose image is all ``pixel``."""
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel

  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel

  from ffr_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  from ffr_jax.demo import render  # pylint: disable=import-outside-toplevel
  spec = render.DEMO_SPEC
  rel = synthetic.relative_image_path(spec, 0, 0, 0)
  base = synthetic.dataset_dir(str(root), spec)
  os.makedirs(os.path.dirname(os.path.join(base, rel)), exist_ok=True)
  Image.fromarray(np.full((8, 8, 3), pixel, np.uint8)).save(os.path.join(base, rel))
  with open(os.path.join(base, synthetic.MANIFEST), "w") as f:
    f.write(json.dumps({"file": rel, "class": spec.class_names[0],
                        "bias": spec.bias_names[0], "index": 0, "prompt": "p",
                        "seed": 0, "generator": "g"}) + "\n")
  return synthetic.load_synthetic(str(root), spec)


def test_same_relative_paths_with_other_bytes_are_other_data(tmp_path, monkeypatch):
  # Two generated pools (a sweep over generator settings) have the same
  # relative paths; sharing a stage between them would reuse the wrong model.
  monkeypatch.setenv("FFR_JAX_CACHE", str(tmp_path / "cache"))
  a = _synthetic_pool(tmp_path / "a", 10)
  other_bytes = _synthetic_pool(tmp_path / "b", 200)
  same_bytes = _synthetic_pool(tmp_path / "c", 10)
  digest = lambda ex, root: plan_lib.examples_digest(ex, [str(root)])  # noqa: E731
  assert digest(a, tmp_path / "a") != digest(other_bytes, tmp_path / "b")
  # The same bytes under another root are the same data (portable workdirs).
  assert digest(a, tmp_path / "a") == digest(same_bytes, tmp_path / "c")
  # Examples built by hand, without the loader's content identities, are
  # identified by their files' bytes all the same.
  by_hand = lambda ex: dataclasses.replace(ex, content=None)  # noqa: E731
  assert digest(by_hand(a), tmp_path / "a") == digest(a, tmp_path / "a")
  assert digest(by_hand(other_bytes), tmp_path / "b") == digest(other_bytes, tmp_path / "b")
  # ... also when they are concatenated with rows that carry them.
  two_roots = lambda ex, r1, r2: plan_lib.examples_digest(ex, [str(r1), str(r2)])  # noqa: E731
  assert (two_roots(Examples.concat([a, by_hand(other_bytes)]), tmp_path / "a", tmp_path / "b")
          != two_roots(Examples.concat([a, by_hand(same_bytes)]), tmp_path / "a", tmp_path / "c"))
  assert digest(Examples.concat([a, by_hand(a)]), tmp_path / "a") == digest(
      Examples.concat([a, a]), tmp_path / "a")


def test_demo_rendered_with_another_seed_is_other_data(tmp_path, monkeypatch):
  from ffr_jax.data import datasets  # pylint: disable=import-outside-toplevel
  from ffr_jax.demo import dataset  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("FFR_JAX_CACHE", str(tmp_path / "cache"))

  def train(name, seed):
    root = str(tmp_path / name)
    dataset.prepare_real(root, scale=0.005, image_size=16, seed=seed)
    c = _config(**{"data.root": root, "data.bias_ratio": 0.95})
    return plan_lib.examples_digest(datasets.load_dataset(c.data).train, [root])

  assert train("a", 3) == train("b", 3)
  assert train("a", 3) != train("c", 4)


def test_data_digest_does_not_depend_on_verify_images(tmp_path, monkeypatch):
  # data.verify_images is a speed setting (config.SPEED_ONLY_KEYS): skipping
  # the decode check must not change which stage a run finds.
  from ffr_jax.data import datasets  # pylint: disable=import-outside-toplevel
  from ffr_jax.demo import dataset  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("FFR_JAX_CACHE", str(tmp_path / "cache"))
  root = str(tmp_path / "real")
  dataset.prepare_real(root, scale=0.005, image_size=16, seed=3)

  def digest(verify):
    c = _config(**{"data.root": root, "data.bias_ratio": 0.95,
                   "data.verify_images": verify})
    return plan_lib.examples_digest(datasets.load_dataset(c.data).train, [root])

  assert digest(True) == digest(False)


# ---------------------------------------------------------------------------
# The RunSpec: evaluation sets are part of a stage; settings checked first.


def _files(root, name, n, ys, bs):
  os.makedirs(root / name, exist_ok=True)
  paths = []
  for i in range(n):
    path = root / name / f"{i}.png"
    path.write_bytes(f"{name}{i}".encode())
    paths.append(str(path))
  return Examples.from_lists(paths, ys[:n], bs[:n])


def _data(root, val_name="val"):
  from ffr_jax.data.types import DatasetSplits  # pylint: disable=import-outside-toplevel
  from ffr_jax.demo import render  # pylint: disable=import-outside-toplevel
  from ffr_jax.training import run as run_lib  # pylint: disable=import-outside-toplevel
  ys, bs = [0, 0, 1, 1, 2, 2, 3, 3], [0, 1, 0, 1, 2, 3, 2, 3]
  splits = DatasetSplits(render.DEMO_SPEC, _files(root, "train", 8, ys, bs),
                         _files(root, val_name, 8, ys, bs),
                         _files(root, "test", 8, ys, bs))
  return run_lib.RunData(splits, None, None, (str(root),))


def test_a_finished_stage_is_never_reused_for_other_evaluation_sets(tmp_path):
  config = _config(mode="none")
  same = plan_lib.plan_run(config, _data(tmp_path)).stages[0]
  other_val = plan_lib.plan_run(config, _data(tmp_path, "val2")).stages[0]
  assert same.data == other_val.data  # the same training examples ...
  assert same.fingerprint != other_val.fingerprint  # ... but another val
  # A held-out synthetic test set added is another stage too (planned from
  # the settings), for every stage of every mode.
  with_syn = _config(mode="ffr", **{"eval.synthetic_test_per_group": 2})
  for a, b in zip(_plans(_config(mode="ffr")), _plans(with_syn)):
    assert a.fingerprint != b.fingerprint


@pytest.mark.parametrize("override, message", [
    ({"dfr.c_grid": ()}, "dfr.c_grid"),
    ({"dfr.num_refits": 0}, "num_refits"), ({"train.lr": float("inf")}, "lr=inf"),
])
def test_method_and_stage_settings_are_checked_before_any_work(override, message):
  method = next(iter(override)).split(".")[0]
  method = "dfr" if method == "dfr" else "erm"
  with pytest.raises(ValueError, match=message):
    _plans(_config(mode="none", method=method, **override))


def test_every_setting_the_loaded_splits_depend_on_names_the_data():
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "waterbirds.py")
  base = plan_lib.data_identity(config_lib.load_config_file(path))
  for key, value in (("data.bias_ratio", 0.9), ("data.split_seed", 3),
                     ("data.bias_val", True)):
    c = config_lib.load_config_file(path)
    config_lib.apply_overrides(c, [(key, value)])
    assert plan_lib.data_identity(c).real != base.real, key
    assert plan_lib.data_identity(c).pool == base.pool, key


def test_runs_that_need_other_synthetic_counts_never_share_loaded_data():
  a = _config(**{"data.synthetic_per_group": 10})
  b = _config(**{"data.synthetic_per_group": 50})
  assert plan_lib.data_key(a) != plan_lib.data_key(b)
