"""Waterbirds, CelebA (official layout, any attribute pair) and the folder
dataset: group counts per split, the bias-ratio rule, prompts, one-line errors,
the summary command, an end-to-end smoke run; and the demo's rendering scale."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys

import fake_trees
import ml_collections
import pytest

from ffr_jax.data import celeba, datasets, folder, layouts, synthetic, waterbirds
from ffr_jax.data.types import DatasetSplits
from ffr_jax.generation import prompts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("train", "val", "test")


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(
      f"cfg_{name}", os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def data_config(name: str, root: str, ratio: float = 0.95, **extra
                ) -> ml_collections.ConfigDict:
  cfg = load_config(name).data
  cfg.unlock()
  cfg.update({"root": root, "bias_ratio": ratio, "verify_images": False,
              **extra})
  return cfg


def counts(splits: DatasetSplits) -> dict[str, dict[tuple[int, int], int]]:
  return {s: {g: splits.split(s).count(*g) for g in splits.spec.groups}
          for s in SPLITS}


def _run_data(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "ffr_jax.data_summary", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def wb_root(tmp_path_factory) -> str:
  return fake_trees.write_waterbirds_tree(str(tmp_path_factory.mktemp("wb")))


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory) -> str:
  return fake_trees.write_celeba_official_tree(
      str(tmp_path_factory.mktemp("celeba")))


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory) -> str:
  return fake_trees.write_folder_tree(str(tmp_path_factory.mktemp("folder")))


# --- Waterbirds ---------------------------------------------------------------


def test_waterbirds_official_splits_as_given(wb_root):
  splits = waterbirds.load(wb_root)
  assert counts(splits) == fake_trees.WATERBIRDS_COUNTS
  assert splits.spec.majority_bias == (0, 1) and splits.skipped == {}


@pytest.mark.parametrize("ratio,train_minority,val_minority", [
    # 0.95: landbird keeps 100 * .05 / .95 = 5.3 -> int(6 - 5.3) = 0 removed;
    # waterbird keeps 2.1 of 4 -> 1 removed. With data.bias_val, val (balanced
    # within class) is brought to the ratio with at least 10 per minority group.
    (0.95, {(0, 1): 6, (1, 0): 3}, {(0, 1): 10, (1, 0): 10}),
    # 0.99: keep 100 * .01 / .99 = 1.01 -> int(6 - 1.01) = 4 removed -> 2.
    (0.99, {(0, 1): 2, (1, 0): 1}, {(0, 1): 10, (1, 0): 10}),
])
def test_waterbirds_ratio_rule_drops_minority_of_train_and_val_on_request(
    wb_root, ratio, train_minority, val_minority):
  splits = datasets.load_dataset(data_config("waterbirds", wb_root, ratio,
                                             bias_val=True))
  got = counts(splits)
  official = fake_trees.WATERBIRDS_COUNTS
  assert got["train"] == {**official["train"], **train_minority}
  assert got["val"] == {**official["val"], **val_minority}
  assert got["test"] == official["test"]  # never changed


@pytest.mark.parametrize("ratio", [0.95, 0.99])
def test_waterbirds_default_val_and_test_are_the_official_ones(wb_root, ratio):
  got = counts(datasets.load_dataset(data_config("waterbirds", wb_root, ratio)))
  official = fake_trees.WATERBIRDS_COUNTS
  assert got["val"] == official["val"] and got["test"] == official["test"]
  assert got["train"] != official["train"] or ratio == 0.95


def test_waterbirds_missing_images_are_counted(tmp_path):
  root = fake_trees.write_waterbirds_tree(str(tmp_path), missing=3)
  splits = waterbirds.load(root)
  assert splits.skipped == {"missing_image": 3}
  assert len(splits.test) == sum(fake_trees.WATERBIRDS_COUNTS["test"].values()) - 3


def _edit_csv(root: str, lineno: int, new: str) -> None:
  path = os.path.join(root, waterbirds.DATASET_DIR, waterbirds.METADATA)
  with open(path) as f:
    lines = f.read().splitlines()
  lines[lineno - 1] = new
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("lineno,new,match", [
    (1, "img_id,img_filename,y,place,place_filename",
     r":1: missing column\(s\) \['split'\]"),
    (3, "2,001.a/b.jpg,0,3,0,x.jpg", r":3: column 'split' must be one of \[0, 1, 2\]"),
    (4, "3,001.a/b.jpg,2,0,0,x.jpg", r":4: column 'y' must be one of \[0, 1\]"),
    (5, "4,001.a/b.jpg,0,0,water,x.jpg", r":5: column 'place'"),
])
def test_waterbirds_bad_metadata_names_the_line(tmp_path, lineno, new, match):
  root = fake_trees.write_waterbirds_tree(str(tmp_path))
  _edit_csv(root, lineno, new)
  with pytest.raises(ValueError, match=match):
    waterbirds.load(root)


def test_waterbirds_root_one_level_too_deep_gets_a_hint(wb_root):
  with pytest.raises(FileNotFoundError, match="pass its parent"):
    waterbirds.load(os.path.join(wb_root, waterbirds.DATASET_DIR))


# --- CelebA -----------------------------------------------------------------------


def test_celeba_official_partition_prebias_and_ratio(celeba_root):
  official_val = counts(datasets.load_dataset(data_config(
      "celeba", celeba_root, 0.95)))["val"]
  assert official_val == fake_trees.CELEBA_COUNTS["val"]  # the default
  splits = datasets.load_dataset(data_config("celeba", celeba_root, 0.95,
                                             bias_val=True))
  spec = splits.spec
  assert spec.class_names == ("not blond", "blond")
  assert spec.bias_names == ("female", "male")
  assert spec.majority_bias == (1, 0)  # configs/celeba.py: not blond:male
  got = counts(splits)
  # Pre-bias 90%: not blond keeps floor(80 * .1 / .9) = 8 women; then 95%:
  # keep 80 * .05 / .95 = 4.2 -> int(8 - 4.2) = 3 removed -> 5. Blond: 40
  # women keep 2.1 men -> int(4 - 2.1) = 1 removed -> 3.
  assert got["train"] == {(0, 0): 5, (0, 1): 80, (1, 0): 40, (1, 1): 3}
  assert got["val"] == {(0, 0): 10, (0, 1): 30, (1, 0): 15, (1, 1): 10}
  assert got["test"] == fake_trees.CELEBA_COUNTS["test"]


def test_celeba_other_attributes_are_a_config_change(tmp_path):
  root = fake_trees.write_celeba_official_tree(
      str(tmp_path), target="Smiling", bias="Young")
  cfg = data_config("celeba", root, 0.95, target_attribute="Smiling",
                    bias_attribute="Young", majority="")
  spec = datasets.dataset_spec(cfg)
  assert spec.class_names == ("not smiling", "smiling")
  assert spec.bias_names == ("old", "young")
  # Inferred from the train counts: 80 > 60 young non-smilers, 40 > 4.
  assert spec.majority_bias == (1, 0)
  assert datasets.load_dataset(cfg).spec == spec


@pytest.mark.parametrize("edit,match", [
    ({"target_attribute": "Blonde_Hair"}, r":2: attribute 'Blonde_Hair' is missing"),
    ({"bias_attribute": "Blond_Hair"}, "two different CelebA attributes"),
    ({"majority": "blond:male"}, r"no majority bias for classes \['not blond'\]"),
    ({"majority": "blond:man,not blond:female"}, "biases are"),
])
def test_celeba_config_mistakes_are_one_line_errors(celeba_root, edit, match):
  with pytest.raises(ValueError, match=match):
    datasets.load_dataset(data_config("celeba", celeba_root, **edit))


def test_celeba_bad_partition_id_names_the_line(tmp_path):
  root = fake_trees.write_celeba_official_tree(str(tmp_path))
  path = os.path.join(root, celeba.PARTITION_FILE)
  with open(path) as f:
    lines = f.read().splitlines()
  lines[4] = lines[4].split()[0] + " 3"
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=r":5: expected 'file 0\|1\|2'"):
    celeba.load(root)


def test_attribute_file_with_double_spaces_parses(celeba_root):
  labels = layouts.read_attributes(
      os.path.join(celeba_root, celeba.ATTRIBUTE_FILE), ("Blond_Hair", "Male"),
      celeba.LAYOUT)
  with open(os.path.join(celeba_root, celeba.ATTRIBUTE_FILE)) as f:
    assert "  1" in f.read()  # the fake file has the real one's double spaces
  assert len(labels) == sum(sum(c.values())
                            for c in fake_trees.CELEBA_COUNTS.values())
  assert set(labels.values()) == {(0, 0), (0, 1), (1, 0), (1, 1)}


# --- Folder dataset ----------------------------------------------------------------


def test_folder_spec_from_the_folders_with_inferred_majority(folder_root, caplog):
  with caplog.at_level(logging.INFO):
    spec = datasets.dataset_spec(data_config("folder", folder_root))
  assert spec.class_names == ("cat", "dog")
  assert spec.bias_names == ("indoor", "outdoor")
  assert spec.majority_bias == (0, 1)
  assert "inferred from the train counts: cat:indoor, dog:outdoor" in caplog.text


def test_folder_majority_from_config_and_ratio_rule(folder_root):
  cfg = data_config("folder", folder_root, 0.95,
                    majority="cat:outdoor,dog:outdoor")
  splits = datasets.load_dataset(cfg)
  assert splits.spec.majority_bias == (1, 1)
  got = counts(splits)
  # cat: majority outdoor (4) keeps 4 * .05 / .95 = 0.2 indoor -> 1 kept.
  assert got["train"][(0, 0)] == 1 and got["train"][(0, 1)] == 4
  # dog: 30 outdoor keep 1.58 indoor -> int(3 - 1.58) = 1 removed -> 2.
  assert got["train"][(1, 0)] == 2
  assert got["test"] == {(0, 0): 6, (0, 1): 6, (1, 0): 6, (1, 1): 6}


def test_folder_keeps_the_data_as_found_unless_a_ratio_is_asked(folder_root, caplog):
  cfg = data_config("folder", folder_root, load_config("folder").data.bias_ratio)
  with caplog.at_level(logging.INFO):
    got = counts(datasets.load_dataset(cfg))
  assert got == {s: {(["cat", "dog"].index(c), ["indoor", "outdoor"].index(b)): n
                     for (c, b), n in fake_trees.FOLDER_COUNTS[s].items()}
                 for s in SPLITS}
  assert "bias ratio as found; train majority share per class: cat 0.909, dog 0.909" in (
      caplog.text)


def test_own_synthetic_images_need_no_manifest(folder_root, tmp_path, caplog):
  spec = datasets.dataset_spec(data_config("folder", folder_root))
  for g, (cls, bias) in enumerate([("cat", "indoor"), ("dog", "outdoor")]):
    for i in range(3):
      fake_trees.write_image(str(tmp_path / "folder" / cls / bias / f"mine_{i}.jpg"), g)
  with caplog.at_level(logging.INFO):
    pool = synthetic.load_synthetic(str(tmp_path), spec)
  assert "using its 6 images as listed" in caplog.text
  assert sorted(os.path.basename(p) for p in pool.path) == sorted(
      [f"mine_{i}.jpg" for i in range(3)] * 2)
  # Nothing is written into the user's folder (it may be read-only, and
  # several hosts read it at once).
  assert not (tmp_path / "folder" / synthetic.MANIFEST).exists()
  again = synthetic.load_synthetic(str(tmp_path), spec)
  assert list(again.path) == list(pool.path)
  with pytest.raises(FileNotFoundError, match="No synthetic images in .*cat, dog x indoor"):
    synthetic.load_synthetic(str(tmp_path / "empty"), spec)


def test_folder_class_missing_from_one_split(tmp_path):
  counts_ = {s: dict(c) for s, c in fake_trees.FOLDER_COUNTS.items()}
  counts_["val"] = {k: v for k, v in counts_["val"].items() if k[0] == "cat"}
  root = fake_trees.write_folder_tree(str(tmp_path), counts_)
  with pytest.raises(ValueError, match=r"class folder 'dog' is missing from .*val"):
    folder.load(root)


def test_folder_bias_folder_missing_from_one_split(tmp_path):
  counts_ = {s: dict(c) for s, c in fake_trees.FOLDER_COUNTS.items()}
  del counts_["test"][("dog", "indoor")]
  root = fake_trees.write_folder_tree(str(tmp_path), counts_)
  with pytest.raises(ValueError, match=r"bias folder test/dog/indoor is missing"):
    folder.load(root)


def test_folder_missing_split(tmp_path):
  root = fake_trees.write_folder_tree(
      str(tmp_path), {"train": fake_trees.FOLDER_COUNTS["train"]})
  with pytest.raises(FileNotFoundError, match="split folder .*val is missing"):
    folder.load(root)


# --- Prompts ---------------------------------------------------------------------


def test_waterbirds_prompts():
  spec = waterbirds.SPEC
  paper = prompts.make_prompt_fn(spec, "paper")
  assert paper(spec.group_index(0, 1), 0) == "A photo of water landbird"
  rich = prompts.make_prompt_fn(spec, "rich", seed=0)
  text = rich(spec.group_index(1, 0), 3)
  assert text.startswith("a photo of ") and (
      "bamboo forest" in text or "broadleaf forest" in text)
  assert rich(spec.group_index(1, 0), 3) == text  # seeded


def test_celeba_rich_prompts_cover_the_default_pair():
  spec = celeba.make_spec("", "Blond_Hair", "Male", "not blond:male,blond:female")
  rich = prompts.make_prompt_fn(spec, "rich")
  assert rich(spec.group_index(1, 1), 0) == (
      "a headshot of male celebrity with blond hair")
  other = celeba.make_spec("", "Smiling", "Young", "smiling:young,not smiling:old")
  with pytest.raises(ValueError, match="do not cover"):
    prompts.make_prompt_fn(other, "rich")


def test_folder_prompts_from_the_config_template(folder_root):
  config = load_config("folder")
  spec = datasets.dataset_spec(data_config("folder", folder_root))
  fn = prompts.make_prompt_fn(spec, config.generate.prompts)
  assert fn(spec.group_index(1, 0), 0) == "a photo of a dog in indoor"
  fn = prompts.make_prompt_fn(spec, "{a_class} at the {bias}")
  assert fn(spec.group_index(0, 1), 0) == "a cat at the outdoor"
  with pytest.raises(ValueError, match="must use"):
    prompts.make_prompt_fn(spec, "a photo of a {class} in {place}")


# --- The summary command -------------------------------------------------------------


@pytest.mark.parametrize("name", ["waterbirds", "celeba", "folder"])
def test_summary_command_json_for_the_new_datasets(name, wb_root, celeba_root,
                                                   folder_root):
  root = {"waterbirds": wb_root, "celeba": celeba_root, "folder": folder_root}[name]
  out = _run_data(f"--config=configs/{name}.py", f"--config.data.root={root}",
                  "--json")
  assert out.returncode == 0, out.stderr
  report = json.loads(out.stdout)
  assert set(report) == {"dataset", "bias_ratio", "splits", "achieved_ratio",
                         "skipped"}
  assert report["dataset"] == name
  expected = datasets.load_dataset(data_config(name, root))
  assert report["splits"]["test"][0]["count"] == expected.test.count(
      *expected.spec.groups[0])


def test_summary_command_bad_layout_is_one_error_line(tmp_path):
  out = _run_data("--config=configs/waterbirds.py",
                  f"--config.data.root={tmp_path}", "--json")
  assert out.returncode == 2 and out.stdout == ""
  assert out.stderr.startswith("error: Waterbirds folder")


# --- The demo's real data: rendered at the config's scale only ---------------------


def test_demo_load_never_renders_with_default_parameters(tmp_path):
  from ffr_jax.demo import dataset as demo  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "real")
  with pytest.raises(FileNotFoundError, match="was not rendered"):
    demo.load(root)
  assert not os.path.exists(root)


def test_demo_smoke_config_renders_at_smoke_scale(tmp_path):
  config = datasets.resolve_roots(load_config("demo", "smoke"), str(tmp_path))
  datasets.prepare_dataset(config)
  from ffr_jax.demo import dataset as demo  # pylint: disable=g-import-not-at-top
  assert demo.read_marker(config.data.root)["scale"] == config.benchmark.scale
  raw = demo.load(config.data.root)
  assert len(raw.train) == sum(demo.split_sizes(config.benchmark.scale)["train"].values())


def test_demo_rerender_with_other_parameters_is_logged(tmp_path, caplog):
  from ffr_jax.demo import dataset as demo  # pylint: disable=g-import-not-at-top
  root = str(tmp_path)
  demo.prepare_real(root, scale=0.005, image_size=16)
  with caplog.at_level(logging.WARNING):
    demo.prepare_real(root, scale=0.006, image_size=16)
  assert "re-rendering" in caplog.text


# --- End to end on a folder dataset --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["none", "usb", "asb", "ffr"])
def test_folder_dataset_trains_every_mode(tmp_path_factory, folder_root, mode):
  from ffr_jax.training import run  # pylint: disable=g-import-not-at-top
  config = load_config("folder", "smoke")
  spec = datasets.dataset_spec(data_config("folder", folder_root))
  synthetic_root = str(tmp_path_factory.mktemp("syn"))
  fake_trees.write_synthetic_tree(synthetic_root, spec, per_group=8)
  with config.unlocked():
    config.data.root = folder_root
    config.data.synthetic_root = synthetic_root
    config.data.synthetic_per_group = 8
    config.data.bias_ratio = 0.9
    config.mode = mode
    config.method = "erm"
  workdir = str(tmp_path_factory.mktemp(f"run_{mode}"))
  run.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert (results["dataset"], results["mode"], results["method"]) == (
      "folder", mode, "erm")
  assert 0.0 <= results["test"]["worst_group_acc"] <= 1.0
