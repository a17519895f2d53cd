"""The two analyses end to end, runs in, figures and JSON out: plain functions
that the command and the Colab notebook (its kernel owns the TPU) both call."""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time

import numpy as np

from ffr_jax.analysis import embeddings as embeddings_lib
from ffr_jax.analysis import rise as rise_lib
from ffr_jax.analysis import run_loading
from ffr_jax.analysis import samples as samples_lib
from ffr_jax.data import datasets
from ffr_jax.data import images as images_lib
from ffr_jax.data.types import SOURCE_NAMES, DatasetSpec, Examples, GroupScheme
from ffr_jax.mesh import Shardings, make_shardings
from ffr_jax.training import last_layer
from ffr_jax.training import spec as spec_lib

EMBEDDINGS_PNG = "embeddings.png"
EMBEDDINGS_JSON = "embeddings.json"
EMBEDDINGS_NPZ = "embeddings.npz"
RISE_JSON = "rise.json"
RISE_NPZ = "rise.npz"
SAMPLE_PREFIX = "sample:"


def _write_json(path: str, obj: dict) -> None:
  with open(path, "w") as f:
    # Insertion order: runs stay in the order they were trained and plotted.
    json.dump(obj, f, indent=2)


def _load_all(workdirs: list[str], shardings: Shardings, stage: str
              ) -> list[run_loading.LoadedRun]:
  # Every run is found and restored before any image is read, so a workdir
  # without a finished run fails at once, not after minutes of embedding.
  runs = run_loading.find_runs_in(list(workdirs))
  return [run_loading.load_run(r, shardings, stage) for r in runs]


def _samples_by_key(loaded: list[run_loading.LoadedRun], per_group: int,
                    synthetic: str, out_dir: str, seed: int
                    ) -> dict[str, samples_lib.Sample]:
  """One image sample per distinct data config, shared by its runs."""
  by_key = collections.defaultdict(list)
  for r in loaded:
    by_key[samples_lib.data_key(r.config)].append(r)
  return {key: samples_lib.make_sample([r.info for r in rs], rs[0].spec,
                                       per_group, synthetic, out_dir, seed)
          for key, rs in by_key.items()}


def _title(loaded: list[run_loading.LoadedRun]) -> str:
  c = loaded[0].config
  return f"{c.data.name}, bias ratio {c.data.bias_ratio}"


def embeddings_report(workdirs: list[str], out_dir: str, *, per_group: int = 100,
                      synthetic: str = "auto", stage: str = run_loading.LAST,
                      seed: int = 0, shardings: Shardings | None = None
                      ) -> dict:
  """t-SNE figure, probe and centroid distances of every run in ``workdirs``.

  ``stage``: ``"last"`` or a stage name (``"stage1"``: FFR before fine-tuning).
  """
  start = time.time()
  shardings = shardings or make_shardings()
  loaded = _load_all(workdirs, shardings, stage)
  os.makedirs(out_dir, exist_ok=True)
  sample_of = _samples_by_key(loaded, per_group, synthetic, out_dir, seed)
  measured, out, arrays = [], {}, {}
  for r in loaded:
    sample = sample_of[samples_lib.data_key(r.config)]
    examples = sample.examples
    emb = last_layer.embed(r.model, r.variables, examples,
                           GroupScheme(r.spec, by_source=False),
                           spec_lib.loop_options(r.config),
                           int(r.config.data.image_size), shardings)
    m = embeddings_lib.measure(r.name, emb, examples, r.spec, seed)
    measured.append(m)
    out[r.name] = {"run_dir": r.info.run_dir, "mode": r.info.mode,
                   "method": r.info.method, "stage": r.stage,
                   "test_worst_group_acc": r.info.results["test"]["worst_group_acc"],
                   **sample.describe(), **embeddings_lib.to_json(m)}
    arrays.update({f"{r.name}/embeddings": emb, f"{r.name}/tsne": m.tsne,
                   f"{r.name}/source": m.source, f"{r.name}/group": m.groups})
    logging.info("%s: real-vs-synthetic probe %.3f, mean centroid distance "
                 "%.3f", r.name, m.probe.accuracy, m.distances["mean"] or -1)
  embeddings_lib.plot(measured, loaded[0].spec,
                      os.path.join(out_dir, EMBEDDINGS_PNG), _title(loaded))
  report = {"runs": out, "per_group": per_group, "seed": seed,
            "wall_seconds": time.time() - start}
  _write_json(os.path.join(out_dir, EMBEDDINGS_JSON), report)
  np.savez_compressed(os.path.join(out_dir, EMBEDDINGS_NPZ), **arrays)
  return report


def embeddings_table(report: dict) -> str:
  lines = ["| run | probe (real vs syn) | mean centroid dist | ref group dist |",
           "|---|---|---|---|"]
  for name, r in report["runs"].items():
    lines.append(f"| {name} | {r['probe_accuracy']:.3f} | "
                 f"{r['mean_centroid_distance']:.3f} | "
                 f"{r['reference_group_distance']:.3f} |")
  return "\n".join(lines)


def select_groups(spec: DatasetSpec, groups: str) -> list[tuple[int, int]]:
  """``"minority"``, ``"all"`` or comma-separated names (``"big dog/indoors"``)."""
  if groups == "minority":
    return [g for g in spec.groups if not spec.is_majority(*g)]
  if groups == "all":
    return list(spec.groups)
  names = {spec.group_name(i): g for i, g in enumerate(spec.groups)}
  chosen = [n.strip() for n in groups.split(",") if n.strip()]
  unknown = [n for n in chosen if n not in names]
  if unknown:
    raise ValueError(f"Unknown group(s) {unknown}; use 'minority', 'all' or "
                     f"names from {sorted(names)}.")
  return [names[n] for n in chosen]


def _labels(paths: list[str], config, spec: DatasetSpec
            ) -> list[tuple[int, int, int] | None]:
  """``(y, b, source)`` of each image where the run's data lists it."""
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(f"No such image file(s): {missing}.")
  data = datasets.load_dataset(samples_lib.without_verification(config.data))
  pool = samples_lib.synthetic_pool(config.data.synthetic_root, spec)
  known = {}
  for ex in (data.train, data.val, data.test, pool):
    known.update({str(p): (int(y), int(b), int(s))
                  for p, y, b, s in zip(ex.path, ex.y, ex.b, ex.source)})
  return [known.get(os.path.abspath(p)) or known.get(p) for p in paths]


def rise_report(workdirs: list[str], out_dir: str, *, images: str = "sample:1",
                groups: str = "minority", with_synthetic: bool = True,
                rise: rise_lib.RiseConfig | None = None,
                synthetic: str = "auto", stage: str = run_loading.LAST,
                seed: int = 0, shardings: Shardings | None = None) -> dict:
  """RISE maps of chosen or sampled images (rows) under every run (columns).

  ``images``: ``"sample:N"`` (``N`` real test images per chosen group, and as
  many held-out synthetic ones with ``with_synthetic``: the paper's Figure 6)
  or comma-separated paths. The explained class is an image's true class where
  the run's data lists it, else each model's prediction.
  """
  start = time.time()
  rise = rise or rise_lib.RiseConfig()
  shardings = shardings or make_shardings()
  loaded = _load_all(workdirs, shardings, stage)
  sizes = {int(r.config.data.image_size) for r in loaded}
  if len(sizes) > 1:
    raise ValueError(f"The runs use different image sizes {sorted(sizes)}; "
                     "compare runs of one data config in a RISE grid.")
  size = sizes.pop()
  first = loaded[0]
  spec = first.spec
  os.makedirs(out_dir, exist_ok=True)
  if images.startswith(SAMPLE_PREFIX):
    n = int(images[len(SAMPLE_PREFIX):])
    real = samples_lib.real_test_sample(first.config, n, seed)
    syn = Examples.empty()
    if with_synthetic:
      same_data = [r.info for r in loaded if samples_lib.data_key(r.config)
                   == samples_lib.data_key(first.config)]
      try:
        syn, _, _ = samples_lib.synthetic_sample(same_data, spec, n, synthetic,
                                                 out_dir)
      except (ValueError, FileNotFoundError) as e:
        if all(r.mode != "none" for r in same_data):
          raise type(e)(str(e).replace("--per_group", "N in --images=sample:N") +
                        " Or pass --nowith_synthetic (real images only).") from e
        raise ValueError(
            "Mode none trains on no synthetic images, and "
            f"{first.config.data.synthetic_root} has too few for --images=sample:{n}: "
            "pass --nowith_synthetic to explain real images only.") from e
    # n real then n synthetic images of each chosen group.
    rows = Examples.concat(ex.take(np.flatnonzero(ex.mask(*g))[:n])
                           for g in select_groups(spec, groups)
                           for ex in (real, syn))
    paths = [str(p) for p in rows.path]
    labels = [(int(y), int(b), int(s))
              for y, b, s in zip(rows.y, rows.b, rows.source)]
  else:
    paths = [p.strip() for p in images.split(",") if p.strip()]
    labels = _labels(paths, first.config, spec)
  if not paths:
    raise ValueError(f"No images selected by --images={images!r} and "
                     f"--groups={groups!r}.")
  pixels = [images_lib.decode(p, size) for p in paths]
  maps = np.zeros((len(paths), len(loaded), size, size), np.float32)
  notes = [[""] * len(loaded) for _ in paths]
  per_image = [{"path": p, "label": None if lab is None else {
      "class": spec.class_names[lab[0]], "bias": spec.bias_names[lab[1]],
      "source": SOURCE_NAMES[lab[2]]}, "runs": {}} for p, lab in zip(paths, labels)]
  for j, r in enumerate(loaded):
    explain = rise_lib.model_explainer(r.model, r.variables, rise, shardings,
                                       r.head)
    for i, image in enumerate(pixels):
      class_maps, probs = explain(image)
      pred = int(np.argmax(probs))
      target = labels[i][0] if labels[i] is not None else pred
      maps[i, j] = class_maps[target]
      notes[i][j] = (f"p({spec.class_names[target]})={probs[target]:.2f}"
                     + ("" if pred == target else
                        f"\npred {spec.class_names[pred]}"))
      per_image[i]["runs"][r.name] = {
          "target": spec.class_names[target], "prob": float(probs[target]),
          "pred": spec.class_names[pred]}
  row_labels = [os.path.basename(p) if lab is None else
                f"{spec.class_names[lab[0]]}/{spec.bias_names[lab[1]]}\n"
                f"{SOURCE_NAMES[lab[2]]}" for p, lab in zip(paths, labels)]
  pages = rise_lib.plot_pages(pixels, row_labels, [r.name for r in loaded], maps,
                              notes, out_dir, _title(loaded))
  report = {"images": per_image, "runs": [r.name for r in loaded],
            "pages": [os.path.basename(p) for p in pages],
            "stage": [r.stage for r in loaded],
            "rise": dataclasses.asdict(rise),
            "wall_seconds": time.time() - start}
  _write_json(os.path.join(out_dir, RISE_JSON), report)
  np.savez_compressed(os.path.join(out_dir, RISE_NPZ), images=np.stack(pixels),
                      maps=maps, runs=np.asarray([r.name for r in loaded]))
  return report
