"""The four modes' compositions: counts, groups and the shortage error."""

from __future__ import annotations

import numpy as np
import pytest

from ffr_jax.data import compose
from ffr_jax.data.types import REAL, SYNTHETIC, DatasetSpec, Examples, GroupScheme

SPEC = DatasetSpec(
    name="toy", class_names=("cat", "dog"), bias_names=("indoors", "outdoors"),
    groups=((0, 0), (0, 1), (1, 0), (1, 1)), majority_bias=(0, 1))
REAL_COUNTS = {(0, 0): 90, (0, 1): 10, (1, 0): 5, (1, 1): 95}


def _examples(counts, source, prefix):
  paths, ys, bs = [], [], []
  for (y, b), n in counts.items():
    for i in range(n):
      paths.append(f"{prefix}/{y}_{b}_{i:04d}.png")
      ys.append(y)
      bs.append(b)
  return Examples.from_lists(paths, ys, bs, source)


def _train():
  return _examples(REAL_COUNTS, REAL, "real")


def _pool(n=200):
  return _examples({g: n for g in SPEC.groups}, SYNTHETIC, "syn")


def test_usb_fills_every_group_to_the_largest():
  comp = compose.compose("usb", SPEC, _train(), _pool())
  (stage,) = comp.stages
  for g in SPEC.groups:
    assert stage.train.count(*g) == 95
    assert stage.train.count(*g, source=REAL) == REAL_COUNTS[g]
  assert stage.by_source
  assert comp.synthetic_per_group == {(0, 0): 5, (0, 1): 85, (1, 0): 90, (1, 1): 0}


def test_asb_adds_the_usb_total_split_equally():
  comp = compose.compose("asb", SPEC, _train(), _pool())
  total = 5 + 85 + 90 + 0
  per_group = total // 4
  (stage,) = comp.stages
  for g in SPEC.groups:
    assert stage.train.count(*g, source=SYNTHETIC) == per_group
    assert stage.train.count(*g, source=REAL) == REAL_COUNTS[g]
  assert GroupScheme(SPEC, stage.by_source).num_groups == 8


def test_ffr_pretrains_on_balanced_synthetic_then_real_alone():
  comp = compose.compose("ffr", SPEC, _train(), _pool())
  s1, s2 = comp.stages
  assert s1.name == compose.STAGE1 and s1.kind == compose.PRETRAIN
  assert not s1.by_source
  assert (s1.train.source == SYNTHETIC).all()
  assert [s1.train.count(*g) for g in SPEC.groups] == [45] * 4
  assert s2.name == compose.STAGE2 and (s2.train.source == REAL).all()
  assert s2.kind == compose.FINETUNE
  assert len(s2.train) == sum(REAL_COUNTS.values())


def test_none_uses_real_only_and_needs_no_pool():
  comp = compose.compose("none", SPEC, _train(), None)
  (stage,) = comp.stages
  assert len(stage.train) == 200 and not stage.by_source


def test_first_images_by_index_are_taken():
  pool = _pool()
  comp = compose.compose("ffr", SPEC, _train(), pool)
  chosen = set(comp.stages[0].train.path)
  for g in SPEC.groups:
    expect = set(pool.path[np.flatnonzero(pool.mask(*g))[:45]])
    assert expect <= chosen


def test_shortage_says_how_many_are_missing():
  with pytest.raises(ValueError, match=r"missing 60") as e:
    compose.compose("usb", SPEC, _train(), _pool(30))
  assert "need 90, have 30" in str(e.value)
  assert "(1, 1)" not in str(e.value)  # that group needs none


def test_explicit_per_group_and_unknown_mode():
  comp = compose.compose("asb", SPEC, _train(), _pool(), per_group=7)
  assert comp.synthetic_per_group == {g: 7 for g in SPEC.groups}
  with pytest.raises(ValueError, match="Unknown mode"):
    compose.compose("mixup", SPEC, _train(), _pool())
  with pytest.raises(ValueError, match="needs synthetic"):
    compose.compose("ffr", SPEC, _train(), None)


def test_reference_counts_spuco_95():
  # docs/reference.md, "Synthetic data": SpuCo Animals at 95%: 38000 synthetic in total, 4750 per group.
  spec = DatasetSpec(
      name="spuco", class_names=("a", "b", "c", "d"),
      bias_names=("w", "x", "y", "z"),
      groups=((0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3)),
      majority_bias=(0, 1, 2, 3))
  counts = {g: (10000 if spec.is_majority(*g) else 500) for g in spec.groups}
  train = _examples(counts, REAL, "r")
  assert compose.balanced_per_group(spec, train) == 4750
  assert sum(compose.usb_needs(spec, train).values()) == 38000


# The ablation modes (Tables 1 and 2).


def test_stage1_only_is_ffrs_stage1_alone():
  ffr = compose.compose("ffr", SPEC, _train(), _pool())
  (s1,) = compose.compose("stage1_only", SPEC, _train(), _pool()).stages
  first = ffr.stages[0]
  assert s1.name == first.name and s1.by_source == first.by_source
  assert s1.kind == first.kind == compose.PRETRAIN
  assert list(s1.train.path) == list(first.train.path)


def test_stage2_then_1_trains_real_first_then_synthetic_unshared():
  real, syn = compose.compose("stage2_then_1", SPEC, _train(), _pool()).stages
  assert (real.train.source == REAL).all() and len(real.train) == 200
  assert real.kind == compose.TRAIN_KIND  # the method, no frozen BN
  assert (syn.train.source == SYNTHETIC).all() and syn.kind == compose.PRETRAIN


def test_ffr_biased_pretrains_on_synthetic_data_in_the_real_proportions():
  comp = compose.compose("ffr_biased", SPEC, _train(), _pool())
  s1, s2 = comp.stages
  total = (5 + 85 + 90 + 0) // 4 * 4  # FFR stage 1's total
  assert len(s1.train) == total == sum(comp.synthetic_per_group.values())
  # 180 * (90, 10, 5, 95) / 200 = 81, 9, 4.5, 85.5: the tie goes to the
  # earlier group.
  assert comp.synthetic_per_group == {(0, 0): 81, (0, 1): 9, (1, 0): 5,
                                      (1, 1): 85}
  assert s1.name == compose.STAGE1_BIASED and s1.kind == compose.PRETRAIN
  assert s2.name == compose.STAGE2 and s2.kind == compose.FINETUNE


def test_biased_counts_sum_exactly():
  for total in (0, 1, 7, 180, 1001):
    counts = compose.biased_counts(SPEC, _train(), total)
    assert sum(counts.values()) == total


def test_describe_gives_every_modes_stages_without_data():
  for mode in compose.MODES:
    described = compose.describe(mode)
    composed = compose.compose(mode, SPEC, _train(), _pool()).stages
    assert [(s.name, s.kind, s.by_source) for s in described] == [
        (s.name, s.kind, s.by_source) for s in composed]
    assert all(s.train is None for s in described)
