"""The real-dataset loaders, the registry and `python -m ffr_jax.data_summary`.

Protects: group counts at every bias ratio (the authors' rule), splits that do
not depend on file-system order, the 90% pre-bias of CelebA-HQ and UTKFace,
skipped files being counted (malformed names, missing and unreadable images),
clear errors for wrong layouts and impossible ratios, and the summary command.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import subprocess
import sys

import fake_trees
import ml_collections
import numpy as np
import pytest

from ffr_jax.data import bias, celeba_hq, datasets, spuco, utk_face
from ffr_jax.data.types import DatasetSpec, DatasetSplits, Examples, group_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("train", "val", "test")

# Scaled SpuCo tree: per group (train, val, test).
MAJORITY = (200, 200, 20)
MINORITY = (20, 30, 20)
# Minority count per group after the rule, by ratio. Train: to_keep =
# 200 * r / (1 - r) and int(20 - to_keep) removed. Val: the same from 30, but at
# least 10 kept.
TRAIN_MINORITY = {0.90: 20, 0.95: 11, 0.97: 7, 0.99: 3, 0.999: 1}
VAL_MINORITY = {0.90: 23, 0.95: 11, 0.97: 10, 0.99: 10, 0.999: 10}


def data_config(name: str, root: str, ratio: float = 0.95, seed: int = 0,
                verify: bool = False) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": name, "root": root, "bias_ratio": ratio, "split_seed": seed,
      "verify_images": verify})


def counts(splits: DatasetSplits, split: str) -> dict[tuple[int, int], int]:
  ex = splits.split(split)
  return {(y, b): ex.count(y, b) for y, b in splits.spec.groups}


def same_splits(a: DatasetSplits, b: DatasetSplits) -> bool:
  return all(
      list(a.split(s).path) == list(b.split(s).path)
      and np.array_equal(a.split(s).y, b.split(s).y)
      and np.array_equal(a.split(s).b, b.split(s).b) for s in SPLITS)


@pytest.fixture(scope="module")
def spuco_root(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("spuco"))
  return fake_trees.write_spuco_tree(root, MAJORITY, MINORITY)


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory) -> str:
  root = str(tmp_path_factory.mktemp("celeba"))
  return fake_trees.write_celeba_tree(root, n=800, missing=(3, 5))


@pytest.fixture(scope="module")
def utk_root(tmp_path_factory) -> str:
  return fake_trees.write_utk_tree(str(tmp_path_factory.mktemp("utk")))


@pytest.fixture
def small_spuco(tmp_path) -> str:
  return fake_trees.write_spuco_tree(str(tmp_path / "spuco"))


# --- Bias ratios ------------------------------------------------------------


@pytest.mark.parametrize("ratio", bias.BIAS_RATIOS)
def test_spuco_counts_follow_the_rule_at_every_ratio(spuco_root, ratio):
  splits = datasets.load_dataset(data_config("spuco_animals", spuco_root, ratio))
  spec = splits.spec
  for split, want_minor in (("train", TRAIN_MINORITY[ratio]),
                            ("val", VAL_MINORITY[ratio]), ("test", MINORITY[2])):
    want_major = MAJORITY[SPLITS.index(split)]
    want = {(y, b): want_major if spec.is_majority(y, b) else want_minor
            for y, b in spec.groups}
    assert counts(splits, split) == want, (split, ratio)


def test_official_spuco_arithmetic():
  # docs/reference.md, "SpuCo Animals": train majority 10000, minority 500 -> kept 500/310/102/11.
  for ratio, kept in ((0.95, 500), (0.97, 310), (0.99, 102), (0.999, 11)):
    assert 500 - bias.minority_to_remove(10000, 500, ratio) == kept
  # Val: majority 500, minority 25 -> 25/16/10/10 with the floor of 10.
  spec = spuco.SPEC
  paths, ys, bs = [], [], []
  for y, b in spec.groups:
    n = 500 if spec.is_majority(y, b) else 25
    paths += [f"{y}_{b}_{i:04d}.jpg" for i in range(n)]
    ys += [y] * n
    bs += [b] * n
  val = Examples.from_lists(paths, ys, bs)
  for ratio, kept in ((0.95, 25), (0.97, 16), (0.99, 10), (0.999, 10)):
    out = bias.apply_bias_ratio(spec, val, ratio, seed=0,
                                min_per_group=bias.MIN_VAL_PER_GROUP)
    assert out.count(0, 1) == out.count(3, 2) == kept


@pytest.mark.parametrize("ratio", [0.95, 0.99])
def test_bias_rule_reaches_the_ratio_with_three_bias_values(ratio):
  # Two classes, three bias values each: two minority groups per class, 1000
  # majority and 200 / 100 minority images. Capping each minority group
  # alone gave a majority share of 0.904 at 0.95.
  spec = DatasetSpec(name="three", class_names=("a", "b"),
                     bias_names=("x", "y", "z"),
                     groups=tuple((c, b) for c in range(2) for b in range(3)),
                     majority_bias=(0, 1))
  sizes = {0: 1000, 1: 200, 2: 100}
  paths, ys, bs = [], [], []
  for y, b in spec.groups:
    n = sizes[(b - y) % 3]
    paths += [f"{y}_{b}_{i:04d}.jpg" for i in range(n)]
    ys += [y] * n
    bs += [b] * n
  out = bias.apply_bias_ratio(spec, Examples.from_lists(paths, ys, bs), ratio,
                              seed=0)
  keep = 300 - bias.minority_to_remove(1000, 300, ratio)
  for y, share in bias.achieved_ratio(spec, out).items():
    assert share == pytest.approx(1000 / (1000 + keep), abs=1e-9)
    assert share == pytest.approx(ratio, abs=1e-3)
    # Shared 2:1, as the minority groups were.
    minor = sorted(out.count(y, b) for b in range(3) if b != y)
    assert sum(minor) == keep and abs(minor[1] - 2 * minor[0]) <= 2


@pytest.mark.parametrize("ratio", [0.5, 1.0, 1.2])
def test_impossible_ratio_fails_before_loading(ratio):
  with pytest.raises(ValueError, match="impossible"):
    datasets.load_dataset(data_config("spuco_animals", "/nonexistent", ratio))


# --- Splits independent of file-system order --------------------------------


def _reversed_listdir(monkeypatch):
  listdir, scandir = os.listdir, os.scandir
  monkeypatch.setattr(os, "listdir",
                      lambda p=".": list(reversed(sorted(listdir(p)))))
  monkeypatch.setattr(
      os, "scandir",
      lambda p=".": iter(sorted(scandir(p), key=lambda e: e.name, reverse=True)))


@pytest.mark.parametrize("name", ["spuco_animals", "utk_face"])
def test_split_ignores_listing_order(name, spuco_root, utk_root, monkeypatch):
  root = spuco_root if name == "spuco_animals" else utk_root
  cfg = data_config(name, root, ratio=0.97, seed=3)
  before = datasets.load_dataset(cfg)
  _reversed_listdir(monkeypatch)
  assert same_splits(before, datasets.load_dataset(cfg))


def test_celeba_split_ignores_row_order(tmp_path):
  a = fake_trees.write_celeba_tree(str(tmp_path / "a"), n=200)
  b = fake_trees.write_celeba_tree(str(tmp_path / "b"), n=200,
                                   row_order=list(reversed(range(200))))
  sa = celeba_hq.load(a, split_seed=1)
  sb = celeba_hq.load(b, split_seed=1)
  for s in SPLITS:
    assert [os.path.basename(p) for p in sa.split(s).path] == [
        os.path.basename(p) for p in sb.split(s).path]
  # A different seed gives a different split.
  assert list(celeba_hq.load(a, split_seed=2).test.path) != list(sa.test.path)


# --- Pre-bias of CelebA-HQ and UTKFace --------------------------------------


def check_prebiased(splits: DatasetSplits, n_examples: int):
  """Train is at 90% by the rule; val too but keeps >= 10; test is 10%."""
  spec = splits.spec
  for y, b_major in enumerate(spec.majority_bias):
    b_minor = 1 - b_major
    n_major = splits.train.count(y, b_major)
    # The pre-bias floors the count to keep, as the authors' script does.
    assert splits.train.count(y, b_minor) == int((1 - 0.9) * n_major / (1 - (1 - 0.9)))  # the authors' float expression
    assert splits.val.count(y, b_minor) == bias.MIN_VAL_PER_GROUP
  n_test = n_examples - round(0.8 * n_examples) - round(0.1 * n_examples)
  assert len(splits.test) == n_test
  # The test split is never made harder: its minority groups stay large.
  assert min(counts(splits, "test").values()) >= n_test // 8


def test_celeba_prebias_and_missing_images(celeba_root):
  splits = celeba_hq.load(celeba_root, split_seed=0)
  assert splits.skipped == {"missing_image": 2}
  assert splits.skipped_files["missing_image"][0].endswith("3.jpg")
  check_prebiased(splits, 798)
  labels = fake_trees.celeba_labels(800)
  for s in SPLITS:
    for p, y, b in zip(splits.split(s).path, splits.split(s).y, splits.split(s).b):
      assert labels[int(os.path.basename(p)[:-4])] == (y, b)


def test_utk_prebias_and_skips(utk_root):
  splits = utk_face.load(utk_root, split_seed=0)
  assert splits.skipped == {"malformed_name": 5, "age_out_of_range": 3}
  assert sorted(os.path.basename(p)
                for p in splits.skipped_files["malformed_name"]) == sorted(
                    fake_trees.UTK_MALFORMED)
  check_prebiased(splits, 400)
  for s in SPLITS:
    ex = splits.split(s)
    for p, y, b in zip(ex.path, ex.y, ex.b):
      face = utk_face.parse_name(os.path.basename(p))
      assert face.gender == y and utk_face.age_bias(face.age) == b


def test_utk_parse_name():
  assert utk_face.parse_name("26_1_3_20170116.jpg.chip.jpg") == utk_face.FaceName(
      26, 1, 3)
  for bad in fake_trees.UTK_MALFORMED:
    assert utk_face.parse_name(bad) is None
  assert [utk_face.age_bias(a) for a in (0, 5, 6, 19, 20, 50, 51)] == [
      1, 1, None, None, 0, 0, None]


# --- Unreadable images ------------------------------------------------------


def test_unreadable_image_is_listed_and_excluded(small_spuco, caplog):
  bad = os.path.join(small_spuco, "spuco_dogs", "test", "big_dogs", "indoor",
                     "big_dogs_indoor_00000.jpg")
  fake_trees.corrupt(bad)
  with caplog.at_level(logging.WARNING):
    splits = datasets.load_dataset(
        data_config("spuco_animals", small_spuco, verify=True))
  assert splits.skipped["unreadable_image"] == 1
  assert splits.skipped_files["unreadable_image"] == [bad]
  assert all(bad not in set(splits.split(s).path) for s in SPLITS)
  assert splits.test.count(3, 2) == 3  # 4 written, 1 unreadable.
  assert "unreadable" in caplog.text and bad in caplog.text


def test_all_unreadable_group_is_an_error(small_spuco):
  folder = os.path.join(small_spuco, "spuco_birds", "test", "waterbirds", "land")
  for name in os.listdir(folder):
    fake_trees.corrupt(os.path.join(folder, name))
  with pytest.raises(ValueError, match=r"waterbird/land.*'test'"):
    datasets.load_dataset(data_config("spuco_animals", small_spuco, verify=True))


# --- Layout errors ----------------------------------------------------------


def test_missing_roots_name_the_layout(tmp_path):
  missing = str(tmp_path / "nope")
  for name, expected in (("spuco_animals", "spuco_dogs"),
                         ("celeba_hq", "CelebAMask-HQ-attribute-anno.txt"),
                         ("utk_face", "[age]_[gender]_[race]")):
    with pytest.raises(FileNotFoundError) as err:
      datasets.load_dataset(data_config(name, missing))
    assert expected in str(err.value)
  with pytest.raises(ValueError, match="config.data.root is empty"):
    datasets.load_dataset(data_config("utk_face", ""))


def test_spuco_wrong_layout(small_spuco):
  os.rename(os.path.join(small_spuco, "spuco_dogs", "val", "small_dogs"),
            os.path.join(small_spuco, "spuco_dogs", "val", "Small_Dogs"))
  with pytest.raises(FileNotFoundError) as err:
    spuco.load(small_spuco)
  msg = str(err.value)
  assert os.path.join("spuco_dogs", "val", "small_dogs", "indoor") in msg
  assert "{small_dogs,big_dogs}/{indoor,outdoor}" in msg


def test_spuco_empty_group_and_stray_files(small_spuco):
  folder = os.path.join(small_spuco, "spuco_birds", "val", "landbirds", "water")
  with open(os.path.join(small_spuco, "spuco_birds", "train", "landbirds",
                         "land", "notes.txt"), "w") as f:
    f.write("x")
  assert spuco.load(small_spuco).skipped == {"not_an_image_file": 1}
  for name in os.listdir(folder):
    os.remove(os.path.join(folder, name))
  with pytest.raises(ValueError, match=r"landbird/water.*'val'"):
    spuco.load(small_spuco)


def test_celeba_missing_annotation_and_image_dir(tmp_path):
  root = fake_trees.write_celeba_tree(str(tmp_path / "c"), n=40)
  os.remove(os.path.join(root, celeba_hq.ANNOTATION_FILE))
  with pytest.raises(FileNotFoundError, match="attribute file"):
    celeba_hq.load(root)
  with pytest.raises(FileNotFoundError, match="CelebA-HQ-img"):
    celeba_hq.load(str(tmp_path))


def _edit_annotation(root: str, lineno: int, new: str | None) -> None:
  path = os.path.join(root, celeba_hq.ANNOTATION_FILE)
  with open(path) as f:
    lines = f.read().splitlines()
  if new is None:
    del lines[lineno - 1]
  else:
    lines[lineno - 1] = new
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("lineno,new,match", [
    (5, "2.jpg " + " ".join(["1"] * 39), r":5: expected a file name and 40"),
    (6, "3.jpg " + " ".join(["0"] * 40), r":6: attribute values must be -1 or 1"),
    (7, "4.jpg " + " ".join(["yes"] * 40), r":7: attribute values"),
    (1, "many", r":1: expected the number of images"),
    (1, "41", r"line 1 says 41 images but 40 rows"),
    (8, None, r"line 1 says 40 images but 39 rows"),
    (2, " ".join(fake_trees.CELEBA_ATTRIBUTES).replace("Smiling", "Smile"),
     r":2: attribute 'Smiling' is missing"),
    (9, "1.jpg " + " ".join(["1"] * 40), r":9: image '1.jpg' is listed twice"),
])
def test_celeba_malformed_annotation(tmp_path, lineno, new, match):
  root = fake_trees.write_celeba_tree(str(tmp_path / "c"), n=40)
  _edit_annotation(root, lineno, new)
  with pytest.raises(ValueError, match=match):
    celeba_hq.load(root)


def test_utk_folder_without_images_hints_at_subfolder(tmp_path):
  fake_trees.write_utk_tree(str(tmp_path / "UTKFace"), per_group=2)
  with pytest.raises(ValueError, match="subfolders.*UTKFace"):
    utk_face.load(str(tmp_path))


# --- Registry ---------------------------------------------------------------


def test_registry_lists_every_dataset_and_rejects_unknown_names():
  with pytest.raises(ValueError, match="celeba, celeba_hq, demo, folder, "
                     "spuco_animals, utk_face, waterbirds"):
    datasets.get_dataset("celebA")
  for name in datasets.DATASETS:
    definition = datasets.get_dataset(name)
    assert definition.spec is None or definition.spec.name == name


def test_demo_is_not_registered_by_importing_the_data_package():
  # A fresh interpreter: importing the registry must not import ffr_jax.demo.
  out = subprocess.run(
      [sys.executable, "-c",
       "import sys; from ffr_jax.data import datasets; "
       "assert 'ffr_jax.demo' not in sys.modules; "
       "assert datasets.get_dataset('demo').self_contained; "
       "assert 'ffr_jax.demo' in sys.modules"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr


def test_dataset_def_needs_one_spec_source():
  with pytest.raises(ValueError, match="exactly one of spec and make_spec"):
    datasets.DatasetDef(None, spuco.load, "x")


def test_spuco_layout_reused_with_another_spec(small_spuco):
  spec = dataclasses.replace(spuco.SPEC, name="demo_like")
  splits = spuco.load_spuco_layout(small_spuco, spec, split_seed=0)
  assert splits.spec.name == "demo_like"
  assert counts(splits, "val") == {
      g: 12 if spec.is_majority(*g) else 10 for g in spec.groups}


# --- Summary command and configs --------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get(
      "PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", "ffr_jax.data_summary", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)


def test_summary_command_json(spuco_root):
  out = _run("--config=configs/spuco.py", f"--config.data.root={spuco_root}",
             "--config.data.bias_ratio=0.99", "--config.data.verify_images=false",
             "--json")
  assert out.returncode == 0, out.stderr
  report = json.loads(out.stdout)  # Exactly one JSON object, nothing else.
  expected = datasets.load_dataset(data_config("spuco_animals", spuco_root, 0.99))
  assert report["dataset"] == "spuco_animals"
  assert report["bias_ratio"] == 0.99
  assert report["splits"] == {
      s: group_table(expected.spec, expected.split(s)) for s in SPLITS}
  assert report["skipped"] == {}


def test_summary_command_table_and_errors(small_spuco):
  out = _run("--config=configs/spuco.py", f"--config.data.root={small_spuco}")
  assert out.returncode == 0, out.stderr
  assert "landbird/land  (majority)" in out.stdout
  assert "achieved bias ratio" in out.stdout
  out = _run("--config=configs/spuco.py", "--config.data.root=/nonexistent/x")
  assert out.returncode == 2 and "spuco_birds" in out.stderr
  assert out.stderr.strip().splitlines()[0].startswith("error: ")
  out = _run("--config=configs/spuco.py", "--config.data.nonexistent=1", "--json")
  assert out.returncode != 0 and out.stdout == ""


def _load_config(name: str, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(
      f"cfg_{name}", os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("file,name", [("spuco", "spuco_animals"),
                                       ("celeba_hq", "celeba_hq"),
                                       ("utk_face", "utk_face")])
def test_configs(file, name):
  config = _load_config(file)
  assert config.data.name == name and name in datasets.DATASETS
  assert config.data.image_size == 224
  # The authors' DFR grid and diffusion steps (docs/reference.md).
  assert tuple(config.dfr.c_grid) == (3, 1, 0.3, 0.1, 0.03, 0.01, 0.003)
  assert config.generate.steps == (50 if name == "spuco_animals" else 25)
  with pytest.raises(AttributeError):
    config.data.nonexistent = 1  # Locked.
  smoke = _load_config(file, "smoke")
  assert (smoke.data.image_size, smoke.model.name, smoke.train.epochs,
          smoke.stage1.epochs, smoke.train.batch_size) == (32, "tiny", 1, 1, 16)
  with pytest.raises(ValueError, match="Unknown config arg 'big'"):
    _load_config(file, "big")


def test_verification_cache_skips_known_good_files_and_rechecks_changed_ones(
    tmp_path, monkeypatch):
  from ffr_jax.data import images as images_lib  # pylint: disable=g-import-not-at-top
  paths = [fake_trees.write_image(str(tmp_path / f"{i}.png"), colour=i) for i in range(4)]
  cache = str(tmp_path / "cache" / "verified.json")
  decoded = []
  real = images_lib._unreadable
  monkeypatch.setattr(images_lib, "_unreadable",
                      lambda p: decoded.append(p) or real(p))
  assert images_lib.find_unreadable(paths, cache_path=cache) == {}
  assert sorted(decoded) == sorted(paths)
  decoded.clear()
  assert images_lib.find_unreadable(paths, cache_path=cache) == {}
  assert decoded == []  # all remembered
  fake_trees.corrupt(paths[1])  # changes size: decoded again, found bad, never cached
  os.utime(paths[1], ns=(1, 1))
  bad = images_lib.find_unreadable(paths, cache_path=cache)
  assert list(bad) == [paths[1]] and decoded == [paths[1]]
  decoded.clear()
  assert list(images_lib.find_unreadable(paths, cache_path=cache)) == [paths[1]]


def test_prebias_floors_like_the_authors():
  # docs/reference.md, "CelebA-HQ": train minority at 90% is 592/866 (CelebA-HQ, majorities
  # 5335/7797) and 103/636 (UTKFace, majorities 934/5731).
  for majority, kept in ((5335, 592), (7797, 866), (934, 103), (5731, 636)):
    removed = bias.minority_to_remove(majority, 5000, 0.9, floor_keep=True)
    assert 5000 - removed == kept
  # Without flooring (the bias-ratio step's rule) one more is kept.
  assert 5000 - bias.minority_to_remove(5335, 5000, 0.9) == 593
