"""Measures the properties the built-in benchmark must have (docs/benchmark.md).

(a) Fingerprint: held-out accuracy of a linear probe (logistic regression on
    pixels) telling real from generated images, per fingerprint strength.
    Strength 0 must be at chance.
(b) Spurious correlation (a proxy until the training engine reports it): a
    tiny CNN trained with ERM on the real train split at 99% bias, loaded
    through the registry exactly as training will, scored on the real test
    split (worst-group vs balanced accuracy); the same CNN trained on
    group-balanced real images as a control (is the class learnable at all?);
    and linear probes for the background vs the class on balanced images (is
    the background the easier cue?).
(c) Time to render 10,000 images, and to prepare the demo's real splits
    (render + PNG files) at the default scale.
(d) Content gap: per ``content_gap``, the generated animals' mean area and
    centroid distance from the image centre, and the real-vs-generated linear
    probe with the fingerprint off (the content gap alone). ``--only_gap``
    measures just this.

Usage::

    PYTHONPATH=. python benchmarks/benchmark_properties.py [--quick]

Prints a table and writes benchmarks/results/benchmark_properties.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import tempfile
import time

import numpy as np

from ffr_jax.demo import dataset, generator, render
from ffr_jax.data import bias as bias_lib
from ffr_jax.data.datasets import get_dataset
from ffr_jax.data.images import decode
from ffr_jax.data.types import GroupScheme

OUT = os.path.join(os.path.dirname(__file__), "results",
                   "benchmark_properties.json")
STRENGTHS = (0.0, 0.1, 0.25, 0.5, 1.0)
CONTENT_GAPS = (0.0, 0.25, 0.5, 1.0)
SPEC = render.DEMO_SPEC
# Salt of the balanced control images: a stream apart from real and generated.
_CONTROL_SALT = 2


@functools.lru_cache(maxsize=4)
def balanced_images(per_group: int, salt: int, size: int, offset: int = 0):
  """Labels, seeds and images of ``per_group`` images per group.

  Rendered once per argument set (the probes at every strength and gap share
  one real set); the arrays are read-only.
  """
  ys = np.repeat([y for y, _ in SPEC.groups], per_group)
  bs = np.repeat([b for _, b in SPEC.groups], per_group)
  seeds = np.tile(np.arange(per_group), len(SPEC.groups)) + offset
  out = ys, bs, seeds, render.render(ys, bs, seeds, size, salt)
  for a in out:
    a.flags.writeable = False
  return out


def linear_probe(x: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
  """Held-out accuracy (75/25 split) of L2 logistic regression on pixels."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  x = x.reshape(len(x), -1).astype(np.float32) / 255.0
  perm = np.random.default_rng(seed).permutation(len(x))
  cut = len(x) * 3 // 4
  tr, te = perm[:cut], perm[cut:]
  scaler = StandardScaler().fit(x[tr])
  clf = LogisticRegression(C=0.01, max_iter=300)
  clf.fit(scaler.transform(x[tr]), labels[tr])
  return float(clf.score(scaler.transform(x[te]), labels[te]))


def real_vs_generated(per_group: int, size: int, strength: float,
                      content_gap: float = 0.0) -> tuple[float, np.ndarray, np.ndarray]:
  """The pixel probe's held-out accuracy, real vs generated, on balanced images.

  Real and generated images share groups and seeds and come from separate
  streams. Returns ``(accuracy, real, generated)``.
  """
  ys, bs, seeds, real = balanced_images(per_group, 0, size, offset=10**7)
  prompts = [generator.build_prompt(SPEC, y, b) for y, b in zip(ys, bs)]
  fake = generator.ProceduralGenerator(strength, size, content_gap=content_gap
                                       ).generate(prompts, seeds)
  labels = np.r_[np.zeros(len(real)), np.ones(len(fake))]
  return linear_probe(np.concatenate([real, fake]), labels), real, fake


def fingerprint_detection(per_group: int, size: int) -> list[dict]:
  """(a): real-vs-generated probe accuracy at each strength."""
  rows = []
  for strength in STRENGTHS:
    accuracy, real, fake = real_vs_generated(per_group, size, strength)
    mean_shift = (fake.reshape(-1, 3).mean(0) - real.reshape(-1, 3).mean(0))
    rows.append({
        "strength": strength,
        "probe_accuracy": accuracy,
        "mean_rgb_shift": [round(float(v), 2) for v in mean_shift],
        "n_per_source": len(real)})
  return rows


def content_gap_effect(per_group: int, size: int) -> list[dict]:
  """(d): what the content gap changes, with the fingerprint off."""
  ys, bs, seeds, _ = balanced_images(per_group, 0, size, offset=10**7)
  rows = []
  for gap in CONTENT_GAPS:
    cover = render.animal_coverage(ys, bs, seeds, size, generator.GENERATOR_SALT, gap)
    area, offset = render.area_and_offset(cover)
    accuracy, real, _ = real_vs_generated(per_group, size, 0.0, gap)
    rows.append({"content_gap": gap, "animal_area": round(area, 4),
                 "centroid_offset": round(offset, 4),
                 "probe_accuracy": accuracy,
                 "n_per_source": len(real)})
  return rows


def _tiny_cnn(num_classes: int):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  class TinyCNN(nn.Module):
    """Three conv blocks and a linear head: the smallest CNN worth asking."""

    @nn.compact
    def __call__(self, x):
      for width in (16, 32, 64):
        x = nn.relu(nn.Conv(width, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
      return nn.Dense(num_classes)(x.mean(axis=(1, 2)))

  return TinyCNN()


def train_cnn(x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0,
              batch: int = 64, lr: float = 1e-3):
  """ERM with Adam; returns a predict function (uint8 images -> labels)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  model = _tiny_cnn(SPEC.num_classes)
  prep = lambda a: jnp.asarray(a, jnp.float32) / 255.0 - 0.5
  params = model.init(jax.random.key(seed), prep(x[:1]))
  tx = optax.adam(lr)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, xb, yb):
    def loss_fn(p):
      logits = model.apply(p, prep(xb))
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  rng = np.random.default_rng(seed)
  for _ in range(epochs):
    perm = rng.permutation(len(x))
    for i in range(0, len(x) - batch + 1, batch):
      idx = perm[i:i + batch]
      params, opt = step(params, opt, x[idx], y[idx])
  apply = jax.jit(lambda p, xb: model.apply(p, prep(xb)).argmax(-1))
  return lambda xs: np.concatenate(
      [np.asarray(apply(params, xs[i:i + 256])) for i in range(0, len(xs), 256)])


def group_accuracies(pred: np.ndarray, ys: np.ndarray, bs: np.ndarray) -> dict:
  accs = {}
  for g, (y, b) in enumerate(SPEC.groups):
    m = (ys == y) & (bs == b)
    accs[SPEC.group_name(g)] = float((pred[m] == y).mean())
  vals = list(accs.values())
  return {"worst_group": min(vals), "balanced": float(np.mean(vals)),
          "per_group": accs}


def _decode_all(examples, size: int) -> np.ndarray:
  return np.stack([decode(str(p), size) for p in examples.path])


def spurious_proxy(root: str, scale: float, size: int, ratio: float,
                   epochs: int, control_per_group: int) -> dict:
  """(b): ERM on biased real data vs on balanced real data, tiny CNN."""
  dataset.prepare_real(root, scale=scale, image_size=size, seed=0)
  splits = get_dataset("demo").load(root, 0)
  splits = bias_lib.bias_splits(splits, ratio, 0)
  train, test = splits.train, splits.test
  x_tr, x_te = _decode_all(train, size), _decode_all(test, size)
  counts = GroupScheme(SPEC).counts(train).tolist()
  t0 = time.time()
  predict = train_cnn(x_tr, train.y, epochs)
  erm = group_accuracies(predict(x_te), test.y, test.b)
  erm_s = time.time() - t0
  ys, bs, _, x_bal = balanced_images(control_per_group, _CONTROL_SALT, size)
  predict = train_cnn(x_bal, ys, epochs)
  control = group_accuracies(predict(x_te), test.y, test.b)
  return {"bias_ratio": ratio, "scale": scale, "epochs": epochs,
          "train_group_counts": counts, "erm_biased": erm,
          "erm_biased_seconds": round(erm_s, 1),
          "balanced_control_per_group": control_per_group,
          "erm_balanced": control}


def cue_difficulty(per_group: int, size: int) -> dict:
  """(b): linear probes for background vs class on balanced real images.

  In SpuCo Animals birds only appear on land/water and dogs only indoors/
  outdoors, so bird-vs-dog is given away by the kind of background; the
  informative comparisons are within a pair: the background (land vs water,
  indoors vs outdoors) against the class (landbird vs waterbird, small vs big
  dog), on the same images.
  """
  ys, bs, _, x = balanced_images(per_group, _CONTROL_SALT, size, offset=10**6)
  out = {"per_group": per_group}
  for pair, classes in (("birds", (0, 1)), ("dogs", (2, 3))):
    m = np.isin(ys, classes)
    out[f"{pair}_background"] = linear_probe(x[m], bs[m])
    out[f"{pair}_class"] = linear_probe(x[m], ys[m])
  return out


def render_timing(size: int, n: int = 10_000) -> dict:
  """(c): seconds to render ``n`` images (groups in turn) at ``size``."""
  g = np.arange(n) % len(SPEC.groups)
  ys = np.array([SPEC.groups[i][0] for i in g])
  bs = np.array([SPEC.groups[i][1] for i in g])
  t = time.time()
  render.render(ys, bs, np.arange(n), size)
  s = time.time() - t
  return {"size": size, "images": n, "seconds": round(s, 2),
          "images_per_second": round(n / s)}


def prepare_timing(scale: float, size: int) -> dict:
  with tempfile.TemporaryDirectory() as root:
    t = time.time()
    dataset.prepare_real(root, scale=scale, image_size=size)
    s = time.time() - t
  n = sum(sum(v.values()) for v in dataset.split_sizes(scale).values())
  return {"scale": scale, "size": size, "images": n, "seconds": round(s, 2)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="smaller, for a smoke run")
  p.add_argument("--size", type=int, default=render.DEFAULT_SIZE)
  p.add_argument("--scale", type=float, default=dataset.DEFAULT_SCALE)
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--out", default=OUT)
  p.add_argument("--only_gap", action="store_true",
                 help="measure (d) only and print it (writes nothing)")
  args = p.parse_args()
  per_group = 60 if args.quick else 250
  if args.only_gap:
    _print_gap(content_gap_effect(per_group, args.size))
    return
  epochs = 2 if args.quick else args.epochs
  scale = 0.02 if args.quick else args.scale
  results = {"machine": {"python": platform.python_version(),
                         "cpus": os.cpu_count()}}
  results["timing"] = [render_timing(args.size), render_timing(64)]
  results["prepare"] = prepare_timing(scale, args.size)
  results["fingerprint"] = fingerprint_detection(per_group, args.size)
  results["cues"] = cue_difficulty(per_group, args.size)
  results["content_gap"] = content_gap_effect(per_group, args.size)
  with tempfile.TemporaryDirectory() as root:
    results["spurious"] = spurious_proxy(root, scale, args.size, 0.99, epochs,
                                         per_group)
  _print(results)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  print(f"wrote {args.out}")


def _print(r: dict) -> None:
  print("(a) real vs generated, linear probe on pixels (held-out accuracy)")
  print("  strength  accuracy  mean RGB shift")
  for row in r["fingerprint"]:
    print(f"  {row['strength']:8.2f}  {row['probe_accuracy']:8.3f}  "
          f"{row['mean_rgb_shift']}")
  c = r["cues"]
  print(f"(b) linear probes on balanced real images ({c['per_group']}/group): "
        f"birds: background {c['birds_background']:.3f}, class "
        f"{c['birds_class']:.3f}; dogs: background {c['dogs_background']:.3f}, "
        f"class {c['dogs_class']:.3f}")
  s = r["spurious"]
  for key in ("erm_biased", "erm_balanced"):
    print(f"    tiny CNN {key:12s}: worst-group {s[key]['worst_group']:.3f}  "
          f"balanced {s[key]['balanced']:.3f}")
  print(f"    (train counts at {s['bias_ratio']}: {s['train_group_counts']})")
  for t in r["timing"]:
    print(f"(c) render {t['images']} images at {t['size']} px: {t['seconds']} s "
          f"({t['images_per_second']}/s)")
  pr = r["prepare"]
  print(f"    prepare_real scale={pr['scale']} ({pr['images']} PNGs): "
        f"{pr['seconds']} s")
  _print_gap(r["content_gap"])


def _print_gap(rows: list[dict]) -> None:
  print("(d) content gap (fingerprint off): animal area, centroid offset, "
        "real-vs-generated probe")
  for row in rows:
    print(f"  gap {row['content_gap']:4.2f}  area {row['animal_area']:.3f}  "
          f"offset {row['centroid_offset']:.3f}  probe {row['probe_accuracy']:.3f}")


if __name__ == "__main__":
  main()
