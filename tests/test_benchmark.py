"""The built-in benchmark: renderer, demo dataset on disk, prompt-driven generator."""

from __future__ import annotations

import importlib.util
import json
import os
import time

import numpy as np
import pytest

from ffr_jax.demo import dataset, generator, render
from ffr_jax.data import bias, spuco
from ffr_jax.data.datasets import get_dataset
from ffr_jax.data.images import decode
from ffr_jax.data.types import GroupScheme
from ffr_jax.generation.base import Generator

SPEC = render.DEMO_SPEC
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _all_groups(per_group: int):
  ys = np.repeat([y for y, _ in SPEC.groups], per_group)
  bs = np.repeat([b for _, b in SPEC.groups], per_group)
  seeds = np.tile(np.arange(per_group), len(SPEC.groups))
  return ys, bs, seeds


def test_render_is_deterministic_and_seed_dependent():
  ys, bs, seeds = _all_groups(3)
  a = render.render(ys, bs, seeds)
  assert a.dtype == np.uint8 and a.shape == (24, 32, 32, 3)
  assert a.tobytes() == render.render(ys, bs, seeds).tobytes()
  assert not np.array_equal(a, render.render(ys, bs, seeds + 100))
  # Image i depends only on (y, b, seed): not on the batch it is drawn in.
  single = render.render(ys[5:6], bs[5:6], seeds[5:6])
  np.testing.assert_array_equal(single[0], a[5])
  assert not np.array_equal(a[0], a[1])


@pytest.mark.parametrize("size", [32, 48, 64])
def test_render_sizes(size):
  out = render.render([2, 3], [3, 2], [0, 1], size)
  assert out.shape == (2, size, size, 3)


def test_render_rejects_non_groups_and_bad_sizes():
  with pytest.raises(ValueError, match="not one of its groups"):
    render.render([0], [2], [0])  # a landbird indoors is no SpuCo group
  with pytest.raises(ValueError, match="image_size"):
    render.render([0], [0], [0], size=8)


def test_background_is_the_big_cue():
  """Mean colour alone separates backgrounds; it does not separate classes."""
  ys, bs, seeds = _all_groups(40)
  means = render.render(ys, bs, seeds).reshape(len(ys), -1, 3).mean(1)
  per_bias = np.stack([means[bs == b].mean(0) for b in range(4)])
  gaps = [np.abs(per_bias[i] - per_bias[j]).max()
          for i in range(4) for j in range(i + 1, 4)]
  assert min(gaps) > 20
  # Within a background, the class moves the mean colour far less.
  land = bs == 0
  diff = np.abs(means[land & (ys == 0)].mean(0) - means[land & (ys == 1)].mean(0))
  assert diff.max() < min(gaps) / 2


def test_split_sizes_scale_spuco():
  sizes = dataset.split_sizes(0.05)
  assert sizes["train"][(0, 0)] == 500 and sizes["train"][(0, 1)] == 25
  assert sizes["val"][(1, 1)] == 25 and sizes["val"][(1, 0)] == 10  # floor
  assert sizes["test"][(2, 3)] == 25 and sizes["test"][(2, 2)] == 25
  with pytest.raises(ValueError, match="scale"):
    dataset.split_sizes(0)


def test_prepare_real_layout_counts_and_skip(tmp_path):
  root = str(tmp_path / "real")
  dataset.prepare_real(root, scale=0.005, image_size=16, seed=3)
  splits = spuco.load_spuco_layout(root, SPEC)
  expected = dataset.split_sizes(0.005)
  for split in ("train", "val", "test"):
    counts = GroupScheme(SPEC).counts(splits.split(split))
    assert counts.tolist() == [expected[split][g] for g in SPEC.groups]
  marker = dataset.read_marker(root)
  assert marker["complete"] and marker["seed"] == 3
  # Every file is the renderer's image for its (split, group, index, seed).
  g = SPEC.group_index(3, 2)
  path = os.path.join(root, "spuco_dogs", "test", "big_dogs", "indoor",
                      "000007.png")
  want = render.render([3], [2], [dataset.image_seed(3, "test", g, 7)], 16)[0]
  np.testing.assert_array_equal(decode(path, 16), want)
  # Same parameters: left alone (files keep their times).
  one = splits.train.path[0]
  mtime = os.path.getmtime(one)
  dataset.prepare_real(root, scale=0.005, image_size=16, seed=3)
  assert os.path.getmtime(one) == mtime
  # Other parameters: re-rendered with different bytes.
  before = open(one, "rb").read()
  dataset.prepare_real(root, scale=0.005, image_size=16, seed=4)
  assert open(one, "rb").read() != before


def test_prepare_real_never_overwrites_real_data(tmp_path):
  os.makedirs(tmp_path / "spuco_birds" / "train")
  with pytest.raises(FileExistsError, match="real SpuCo"):
    dataset.prepare_real(str(tmp_path), scale=0.005, image_size=16)


def test_demo_dataset_in_registry_and_bias_ratio(tmp_path):
  root = str(tmp_path / "real")
  dataset.prepare_real(root, scale=0.02, image_size=16)
  definition = get_dataset("demo")
  splits = definition.load(root, 0)
  assert splits.spec.name == "demo" and splits.skipped == {}
  biased = bias.bias_splits(splits, 0.99, 0)
  ratios = bias.achieved_ratio(SPEC, biased.train)
  # The authors' rule truncates the removal count: 200 majority keep 3 minority.
  assert all(0.98 < r < 1 for r in ratios.values())
  counts = GroupScheme(SPEC).counts(biased.val)
  assert counts.min() >= bias.MIN_VAL_PER_GROUP


@pytest.mark.parametrize("template", ["paper", "rich"])
def test_prompts_round_trip_for_every_group(template):
  for y, b in SPEC.groups:
    for variant in range(4):
      prompt = generator.build_prompt(SPEC, y, b, template, variant)
      assert generator.parse_prompt(prompt) == (y, b), prompt


def test_prompt_forms():
  parse = generator.parse_prompt
  assert generator.build_prompt(SPEC, 2, 2) == "A photo of indoors small dog"
  assert parse("A photo of indoors small dog") == (2, 2)
  assert parse("  a  PHOTO of water landbird. ") == (0, 1)
  assert parse("a photo of a waterbird in the ocean") == (1, 1)
  assert parse("a photo of a waterbird on land") == (1, 0)
  assert parse("a photo of a big dog in a kitchen") == (3, 2)


@pytest.mark.parametrize("prompt", [
    "a painting of a cat", "A photo of indoors landbird",
    "a photo of a small dog in the sky", ""])
def test_bad_prompt_is_a_clear_error(prompt):
  with pytest.raises(ValueError) as e:
    generator.parse_prompt(prompt)
  assert repr(prompt) in str(e.value)
  assert "photo of" in str(e.value) or "not a group" in str(e.value)


def test_generator_protocol_and_determinism():
  gen = generator.ProceduralGenerator(0.5, 32)
  assert isinstance(gen, Generator) and gen.name == "procedural-fp0.5"
  prompts = ["A photo of land landbird", "a photo of a big dog in a park"]
  a = gen.generate(prompts, [1, 2])
  assert a.shape == (2, 32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, gen.generate(prompts, [1, 2]))
  np.testing.assert_array_equal(a[1], gen.generate(prompts[1:], [2])[0])
  assert not np.array_equal(a[0], gen.generate(prompts[:1], [3])[0])
  # A separate random stream: a generated image never copies a real one.
  assert not np.array_equal(a[0], render.render([0], [0], [1])[0])


def test_strength_zero_matches_real_statistics_and_large_differs():
  ys, bs, seeds = _all_groups(40)
  prompts = [generator.build_prompt(SPEC, y, b) for y, b in zip(ys, bs)]
  real = render.render(ys, bs, seeds + 10_000).astype(np.float64)

  def stats(x):
    return x.reshape(-1, 3).mean(0), x.reshape(-1, 3).std(0)

  def high_freq(x):  # mean absolute horizontal difference: texture/noise
    return np.abs(np.diff(x, axis=2)).mean()

  m_real, s_real = stats(real)
  fake0 = generator.ProceduralGenerator(0.0).generate(prompts, seeds)
  m0, s0 = stats(fake0.astype(np.float64))
  assert np.abs(m0 - m_real).max() < 2.0 and np.abs(s0 - s_real).max() < 2.0
  assert abs(high_freq(fake0.astype(np.float64)) - high_freq(real)) < 0.3
  fake1 = generator.ProceduralGenerator(1.0).generate(prompts, seeds)
  m1, _ = stats(fake1.astype(np.float64))
  assert np.abs(m1 - m_real).max() > 3.0
  assert high_freq(real) - high_freq(fake1.astype(np.float64)) > 0.5
  # Strength 0 is exactly the renderer's distribution, byte for byte.
  same = render.render(ys[:4], bs[:4], seeds[:4], salt=generator.GENERATOR_SALT)
  np.testing.assert_array_equal(fake0[:4], same)


def test_render_speed_floor():
  """The demo renders ~5k images; 300/s keeps that under 20 s on a busy CPU."""
  ys, bs, seeds = _all_groups(250)
  render.render(ys[:8], bs[:8], seeds[:8])
  t = time.perf_counter()
  render.render(ys, bs, seeds)
  rate = len(ys) / (time.perf_counter() - t)
  assert rate > 300, f"{rate:.0f} images/s"


def test_grid_cli(tmp_path):
  from ffr_jax.benchmark import main  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "grid.png")
  assert main(["grid", f"--out={out}", "--strength=1", "--per_group=2"]) == 0
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(out) as im:
    assert im.size[1] > 8 * 32


def _load_config(arg):
  spec = importlib.util.spec_from_file_location(
      "demo_config", os.path.join(ROOT, "configs", "demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_demo_config():
  c = _load_config(None)
  assert c.data.name == "demo" and c.data.bias_ratio == 0.99
  assert c.generate.generator == "procedural" and c.data.cache_images
  c.benchmark.image_size = 48
  assert c.data.image_size == 48  # follows the benchmark's size
  with pytest.raises(AttributeError):
    c.benchmark.no_such_key = 1  # locked
  smoke = _load_config("smoke")
  assert smoke.benchmark.scale < c.benchmark.scale and smoke.train.epochs == 1
  assert smoke.data.image_size == smoke.benchmark.image_size == 32
  json.dumps(smoke.to_dict())
  with pytest.raises(ValueError, match="arg"):
    _load_config("huge")
  assert get_dataset("demo").self_contained


def _prompts(ys, bs):
  return [generator.build_prompt(SPEC, y, b) for y, b in zip(ys, bs)]


def test_no_gap_no_fingerprint_is_the_renderer_byte_for_byte():
  """Both knobs at 0: the generator draws exactly the renderer's images."""
  ys, bs, seeds = _all_groups(3)
  gen = generator.ProceduralGenerator(0.0, 32, content_gap=0.0)
  same = render.render(ys, bs, seeds, salt=generator.GENERATOR_SALT,
                       content_gap=0.0)
  np.testing.assert_array_equal(gen.generate(_prompts(ys, bs), seeds), same)
  # The knob's default leaves the real renderer's bytes alone.
  np.testing.assert_array_equal(render.render(ys, bs, seeds),
                                render.render(ys, bs, seeds, content_gap=0.0))
  assert gen.name == "procedural-fp0"  # manifests from before the knob stay valid


def test_content_gap_makes_animals_larger_centred_and_scenes_cleaner():
  ys, bs, seeds = _all_groups(30)
  salt = generator.GENERATOR_SALT
  area0, off0 = render.area_and_offset(render.animal_coverage(ys, bs, seeds, salt=salt))
  area1, off1 = render.area_and_offset(
      render.animal_coverage(ys, bs, seeds, salt=salt, content_gap=1.0))
  assert area1 > 1.5 * area0, (area0, area1)
  assert off1 < 0.6 * off0, (off0, off1)
  # Cleaner backgrounds: less fine texture at the corners (where no animal is).
  def corner_texture(x):
    return np.abs(np.diff(x[:, :6, :6].astype(np.float64), axis=2)).mean()
  gen0 = generator.ProceduralGenerator(0.0, content_gap=0.0).generate(_prompts(ys, bs), seeds)
  gen1 = generator.ProceduralGenerator(0.0, content_gap=1.0).generate(_prompts(ys, bs), seeds)
  assert corner_texture(gen1) < corner_texture(gen0)
  assert generator.ProceduralGenerator(0.5, content_gap=1.0).name == "procedural-fp0.5-cg1"


@pytest.mark.parametrize("gap", [-0.1, 1.5])
def test_content_gap_outside_unit_interval_is_a_clear_error(gap):
  with pytest.raises(ValueError, match="content_gap"):
    generator.ProceduralGenerator(0.5, content_gap=gap)
  with pytest.raises(ValueError, match="content_gap"):
    render.render([0], [0], [0], content_gap=gap)


def test_demo_defaults_are_the_calibrations_choice():
  """The benchmark's knobs are the pre-registered calibration's choice
  (benchmarks/calibration.py), not a hand-picked value."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "benchmarks", "results", "calibration.json")) as f:
    choice = json.load(f)["choice"]
  b = _load_config(None).benchmark
  assert (b.content_gap, b.strength) == (choice["content_gap"], choice["strength"])
  assert choice["class_cue"] == 1.0 and choice["passed"]


# Pixel sums of image seed 7 of each group, real and generated at strength 0.5,
# from the renderer before the content gap existed (its sha256 was checked
# equal after the knob was added). A changed formula moves them by hundreds;
# the tolerance only absorbs last-ulp rounding flips on other CPUs.
_REAL_SUMS = (250371, 351264, 244674, 325473, 464032, 399401, 370676, 377652)
_GENERATED_SUMS = (205662, 277493, 265426, 263721, 392994, 497127, 405707, 478576)


def test_default_images_are_those_from_before_the_content_gap():
  ys = [y for y, _ in SPEC.groups]
  bs = [b for _, b in SPEC.groups]
  seeds = [7] * len(ys)
  real = render.render(ys, bs, seeds).reshape(len(ys), -1).astype(np.int64).sum(1)
  fake = generator.ProceduralGenerator(0.5).generate(_prompts(ys, bs), seeds)
  fake = fake.reshape(len(ys), -1).astype(np.int64).sum(1)
  assert np.abs(real - _REAL_SUMS).max() <= 16, real.tolist()
  assert np.abs(fake - _GENERATED_SUMS).max() <= 16, fake.tolist()


def test_the_configs_content_gap_reaches_the_generator_and_its_folder(tmp_path):
  from ffr_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from ffr_jax import experiments  # pylint: disable=g-import-not-at-top
  from ffr_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from ffr_jax.generation import factory  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(
      os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py:smoke"))
  config.benchmark.content_gap = 0.5
  generator = factory.make_generator(config, datasets.dataset_spec(config.data))
  assert generator.content_gap == 0.5
  roots = {gap: dict(experiments._shared_data_dirs(  # pylint: disable=protected-access
      _with_gap(config, gap), str(tmp_path))) for gap in (0.0, 0.5)}
  assert roots[0.0]["data.synthetic_root"] != roots[0.5]["data.synthetic_root"]
  assert roots[0.0]["data.root"] == roots[0.5]["data.root"]  # real data alike


def _with_gap(config, gap):
  import copy  # pylint: disable=g-import-not-at-top
  c = copy.deepcopy(config)
  c.benchmark.content_gap = gap
  return c
