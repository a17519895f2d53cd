"""Writes a balanced synthetic dataset to disk: resumable, reproducible, filtered.

In :mod:`ffr_jax.data.synthetic`'s layout, plus ``generation.json`` (seed,
generator, prompts; checked on resume). Image ``i`` of group ``g`` comes from ``prompt_fn(g, i)`` and
:func:`image_seed`, so its bytes depend on neither batch size, device count nor
where an earlier run stopped.

Crash safety: PNGs are written under a temporary name, synced and renamed; only
then is their manifest line appended, so the manifest is the source of truth.
On restart a torn last line, stray temporary files and unlisted PNGs are
removed, lines whose file vanished or no longer decodes are dropped, and
exactly the missing indices are generated.

Multi-host: every host calls :func:`generate_dataset` with the same arguments
(sampling is one collective computation); host 0 alone plans, broadcasts the
plan and writes every file, so resuming works with any number of hosts.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import re
import time
from collections.abc import Callable, Mapping

import numpy as np
from PIL import Image

from ffr_jax.data.images import find_unreadable
from ffr_jax.data.synthetic import (
    MANIFEST, ManifestRecord, dataset_dir, read_manifest, relative_image_path,
    verified_cache_path)
from ffr_jax.data.types import DatasetSpec
from ffr_jax.generation.base import Generator
from ffr_jax.lifecycle import write_atomic
from ffr_jax.progress import Progress, format_seconds

METADATA = "generation.json"
TMP_SUFFIX = ".tmp"
_IMAGE_NAME = re.compile(r"^\d{6}\.png$")

# Mean over pixels of (max - min over RGB), in uint8 levels. Colour photos score
# roughly 15-60; black-and-white photos and the safety checker's black images
# score 0-2. 3 keeps faint colour casts (sepia, night scenes) and drops grays.
GRAY_THRESHOLD = 3.0
# Standard deviation of luminance, in uint8 levels: a blank (constant) image of
# any colour scores about 0; any real scene scores far above 2.
BLANK_THRESHOLD = 2.0
MAX_ATTEMPTS = 20

PromptFn = Callable[[int, int], str]
RejectFn = Callable[[np.ndarray], "str | None"]


def image_seed(seed: int, group: int, index: int, attempt: int = 0) -> int:
  """A 31-bit seed, unrelated for neighbouring ``(group, index)``; ``attempt``
  counts regenerations after the filter."""
  ss = np.random.SeedSequence([int(seed), int(group), int(index), int(attempt)])
  return int(ss.generate_state(1, np.uint32)[0] & 0x7FFFFFFF)


def channel_spread(image: np.ndarray) -> float:
  """Mean over pixels of ``max - min`` over the RGB channels (uint8 levels)."""
  img = np.asarray(image, np.int16)
  return float((img.max(axis=-1) - img.min(axis=-1)).mean())


def reject_reason(image: np.ndarray, gray_threshold: float = GRAY_THRESHOLD,
                  blank_threshold: float = BLANK_THRESHOLD) -> str | None:
  """Why an image is dropped (and regenerated): ``"blank"``, ``"grayscale"`` or
  None (kept). A threshold of 0 disables that test."""
  img = np.asarray(image, np.float32)
  if blank_threshold > 0 and float(img.mean(axis=-1).std()) < blank_threshold:
    return "blank"
  if gray_threshold > 0 and channel_spread(image) < gray_threshold:
    return "grayscale"
  return None


def keep_all(image: np.ndarray) -> str | None:  # pylint: disable=unused-argument
  """Disables the filter."""
  return None


@dataclasses.dataclass
class GroupSummary:
  """What one run did for one ``(y, b)`` group."""
  name: str
  target: int
  present: int = 0     # already on disk (and in the manifest) at the start
  generated: int = 0   # written by this run
  filtered: int = 0    # dropped by the filter and regenerated
  repaired: int = 0    # manifest lines dropped because their file had vanished
  unreadable: int = 0  # listed files that no longer decoded (regenerated)


@dataclasses.dataclass
class GenerationSummary:
  """Per-group counts of one :func:`generate_dataset` run."""
  groups: list[GroupSummary]
  removed_orphans: int = 0
  removed_temp: int = 0
  filter_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
  seconds: float = 0.0

  @property
  def generated(self) -> int:
    return sum(g.generated for g in self.groups)

  @property
  def filtered(self) -> int:
    return sum(g.filtered for g in self.groups)

  def table(self) -> str:
    """A plain-text table, one row per group plus a total."""
    head = f"{'group':<28}{'target':>8}{'present':>9}{'generated':>11}{'filtered':>10}"
    rows = [head, "-" * len(head)]
    total = GroupSummary("total", sum(g.target for g in self.groups),
                         sum(g.present for g in self.groups), self.generated,
                         self.filtered)
    for g in self.groups + [total]:
      rows.append(f"{g.name:<28}{g.target:>8}{g.present:>9}{g.generated:>11}"
                  f"{g.filtered:>10}")
    extra = []
    if self.filter_reasons:
      extra.append("filtered by reason: " + ", ".join(
          f"{k} {v}" for k, v in sorted(self.filter_reasons.items())))
    if self.removed_orphans or self.removed_temp:
      extra.append(f"cleaned up: {self.removed_orphans} orphan PNGs, "
                   f"{self.removed_temp} temporary files")
    if any(g.repaired for g in self.groups):
      extra.append(f"repaired: {sum(g.repaired for g in self.groups)} manifest "
                   "lines whose file had vanished (regenerated)")
    if any(g.unreadable for g in self.groups):
      extra.append(f"repaired: {sum(g.unreadable for g in self.groups)} listed "
                   "images that did not decode (regenerated)")
    rate = self.generated / self.seconds if self.seconds > 0 else 0.0
    extra.append(f"time {format_seconds(self.seconds)}, {rate:.2f} images/s")
    return "\n".join(rows + extra)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def per_group_counts(spec: DatasetSpec,
                     per_group: int | Mapping[tuple[int, int], int]) -> list[int]:
  """Target count of every group in ``spec.groups`` order, from one count or
  ``{(y, b): count}`` naming every group."""
  if isinstance(per_group, Mapping):
    unknown = [k for k in per_group if tuple(k) not in spec.groups]
    missing = [k for k in spec.groups if k not in per_group]
    if unknown or missing:
      raise ValueError(
          f"{spec.name}: per_group must name exactly the groups {spec.groups}; "
          f"unknown {unknown}, missing {missing}.")
    counts = [int(per_group[k]) for k in spec.groups]
  else:
    counts = [int(per_group)] * len(spec.groups)
  if any(c < 0 for c in counts):
    raise ValueError(f"{spec.name}: negative per-group count in {counts}.")
  return counts


def _truncate_torn_line(path: str) -> bool:
  """Cuts text after the last newline of ``path`` (a torn write); True if cut."""
  if not os.path.isfile(path):
    return False
  with open(path, "rb+") as f:
    data = f.read()
    keep = data.rfind(b"\n") + 1
    if keep == len(data):
      return False
    f.truncate(keep)
    f.flush()
    os.fsync(f.fileno())
  return True


def _image_files(base: str, spec: DatasetSpec) -> tuple[list[str], list[str]]:
  """Relative paths of our PNGs and temporary files under ``base`` (only names
  this writer produces, so unrelated files are never touched)."""
  pngs, tmps = [], []
  for y, b in spec.groups:
    rel_dir = os.path.dirname(relative_image_path(spec, y, b, 0))
    full = os.path.join(base, rel_dir)
    if not os.path.isdir(full):
      continue
    for name in sorted(os.listdir(full)):
      if _IMAGE_NAME.match(name):
        pngs.append(os.path.join(rel_dir, name))
      elif name.startswith(".") and name.endswith(TMP_SUFFIX):
        tmps.append(os.path.join(rel_dir, name))
  return pngs, tmps


def _check_metadata(base: str, meta: dict) -> None:
  """Writes ``generation.json`` or checks it matches this run's settings."""
  path = os.path.join(base, METADATA)
  if os.path.isfile(path):
    with open(path) as f:
      old = json.load(f)
    diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
    if diff:
      raise ValueError(
          f"{base} was generated with other settings {diff} (old, new); "
          "resuming would mix them. Use another output folder or the old settings.")
    return
  write_atomic(path, json.dumps(meta, indent=2, sort_keys=True))


def _prepare_folder(out_root: str, spec: DatasetSpec, summary: GenerationSummary
                    ) -> set[tuple[int, int]]:
  """Repairs an interrupted folder; returns the ``(g, index)`` already done."""
  base = dataset_dir(out_root, spec)
  manifest = os.path.join(base, MANIFEST)
  _truncate_torn_line(manifest)
  report, records = _check(out_root, spec)
  missing, done, kept = set(report.missing), set(), []
  for rec in records:
    g = spec.group_index(spec.class_index(rec.cls), spec.bias_index(rec.bias))
    rel = os.path.normpath(rec.file)
    # A vanished file was removed by hand; a damaged one was cut or overwritten
    # after it was written; a duplicate line cannot come from this writer. Each
    # way the image is (re)generated from its seed.
    if rel in missing:
      summary.groups[g].repaired += 1
    elif rel in report.unreadable:
      summary.groups[g].unreadable += 1
    else:
      done.add((g, rec.index))
      kept.append(rec)
  if report.duplicates or missing or report.unreadable:
    write_atomic(manifest, "".join(r.to_json() + "\n" for r in kept))
  # Listed, so not counted as orphans below: those count what a crash leaves.
  for rel in report.unreadable:
    os.remove(os.path.join(base, rel))
  for rel in report.temp_files:
    os.remove(os.path.join(base, rel))
  orphans = report.orphans
  if orphans and len(orphans) > len(kept):
    # A crash leaves at most one batch of unlisted images. More unlisted than
    # listed images means a lost or replaced manifest: deleting them would
    # throw away finished work (hours of Stable Diffusion), so stop instead.
    raise RuntimeError(
        f"{base}: {len(orphans)} images are not listed in {MANIFEST} (which "
        f"lists {len(kept)}), e.g. {orphans[:3]}. That is more than an "
        "interrupted run leaves behind; restore the manifest or move the "
        "images away, then rerun (`python -m ffr_jax.generate --verify` "
        "reports the folder's state).")
  for rel in orphans:
    os.remove(os.path.join(base, rel))
  summary.removed_temp += len(report.temp_files)
  summary.removed_orphans += len(orphans)
  return done


def _write_files_durably(files: list[tuple[str, bytes]]) -> None:
  """Writes a batch of files via temporary names, all on disk on return (one
  ``os.sync`` per batch: per-file fsyncs bounded generation to ~120 images/s)."""
  tmps = []
  for path, data in files:
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path)
                       + TMP_SUFFIX)
    with open(tmp, "wb") as f:
      f.write(data)
    tmps.append(tmp)
  os.sync()  # the temporary files' bytes are durable ...
  for tmp, (path, _) in zip(tmps, files):
    os.replace(tmp, path)  # ... before any becomes visible under its name
  os.sync()


def _broadcast_plan(todo: np.ndarray, count: int) -> np.ndarray:
  """Host 0's boolean array (the plan, or its failure flag) on every host."""
  if count == 1:
    return todo
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.broadcast_one_to_all(todo)).astype(bool)


@dataclasses.dataclass
class _Item:
  group: int
  index: int
  attempt: int = 0


def generate_dataset(
    generator: Generator,
    spec: DatasetSpec,
    per_group: int | Mapping[tuple[int, int], int],
    out_root: str,
    prompt_fn: PromptFn,
    seed: int = 0,
    batch_size: int = 8,
    *,
    reject_fn: RejectFn = reject_reason,
    max_attempts: int = MAX_ATTEMPTS,
    metadata: Mapping[str, object] | None = None,
    show_progress: bool = True,
    stop_after: int | None = None,
) -> GenerationSummary:
  """Generates the images of ``{out_root}/{spec.name}`` its manifest lacks.

  Resumes an interrupted run; a no-op on a complete folder. ``metadata`` goes
  into ``generation.json`` and is checked on resume; ``stop_after`` stops after
  that many images (tests). Raises RuntimeError when an image is rejected
  ``max_attempts`` times in a row.
  """
  targets = per_group_counts(spec, per_group)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  start = time.perf_counter()
  summary = GenerationSummary(
      [GroupSummary(spec.group_name(g), t) for g, t in enumerate(targets)])
  import jax  # pylint: disable=import-outside-toplevel
  process_count = jax.process_count()
  writer = jax.process_index() == 0
  base = dataset_dir(out_root, spec)

  todo = np.zeros((len(targets), max(targets, default=0)), bool)
  failure = None
  if writer:
    try:
      os.makedirs(base, exist_ok=True)
      meta = {"seed": int(seed), "generator": generator.name,
              "image_size": int(generator.image_size), **dict(metadata or {})}
      _check_metadata(base, meta)
      done = _prepare_folder(out_root, spec, summary)
    except (OSError, ValueError, RuntimeError) as e:
      # Raised after the broadcast below, so the other hosts (waiting for the
      # plan) learn of it and stop too instead of hanging.
      failure = e
    else:
      for g, t in enumerate(targets):
        todo[g, :t] = [(g, i) not in done for i in range(t)]
        summary.groups[g].present = int(t - todo[g, :t].sum())
  failed = _broadcast_plan(np.asarray([failure is not None]), process_count)
  if failure is not None:
    raise failure
  if failed[0]:
    raise RuntimeError(f"{base}: host 0 could not prepare the folder; see its "
                       "log for the reason.")
  todo = _broadcast_plan(todo, process_count)

  pending = collections.deque(
      _Item(g, int(i)) for g in range(len(targets)) for i in np.flatnonzero(todo[g]))
  bar = Progress(len(pending), f"{spec.name}", unit="img",
                 enabled=writer and show_progress)
  manifest_file = open(os.path.join(base, MANIFEST), "a") if writer else None
  written = 0
  try:
    while pending and (stop_after is None or written < stop_after):
      batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
      retry = _run_batch(generator, spec, batch, prompt_fn, seed, base,
                         reject_fn, summary, manifest_file)
      for item in retry:
        if item.attempt + 1 >= max_attempts:
          raise RuntimeError(
              f"{spec.name}: image {item.index} of group "
              f"{spec.group_name(item.group)} was rejected by the filter "
              f"{max_attempts} times; is the generator producing gray or blank "
              "images? Lower the thresholds or pass reject_fn=keep_all.")
      # Retries go first, so a rejected image is redone in the next call.
      pending.extendleft(
          _Item(it.group, it.index, it.attempt + 1) for it in reversed(retry))
      accepted = len(batch) - len(retry)
      written += accepted
      bar.update(accepted, postfix=f"filtered {summary.filtered}")
  finally:
    if manifest_file is not None:
      manifest_file.close()
    bar.close()
  if process_count > 1:
    # Host 0 wrote the files; no host may read the folder before that ends.
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(f"ffr_jax:generated:{spec.name}")
  summary.seconds = time.perf_counter() - start
  return summary


def _run_batch(generator: Generator, spec: DatasetSpec, batch: list[_Item],
               prompt_fn: PromptFn, seed: int, base: str, reject_fn: RejectFn,
               summary: GenerationSummary,
               manifest_file: io.TextIOBase | None) -> list[_Item]:
  """Generates and writes one batch; returns the items the filter rejected."""
  prompts = [prompt_fn(it.group, it.index) for it in batch]
  seeds = [image_seed(seed, it.group, it.index, it.attempt) for it in batch]
  images = np.asarray(generator.generate(prompts, seeds))
  size = generator.image_size
  if images.shape != (len(batch), size, size, 3) or images.dtype != np.uint8:
    raise ValueError(
        f"generator {generator.name!r} returned {images.dtype} {images.shape}; "
        f"expected uint8 {(len(batch), size, size, 3)}.")
  retry, files, records = [], [], []
  for it, prompt, s, image in zip(batch, prompts, seeds, images):
    reason = reject_fn(image)
    if reason is not None:
      summary.groups[it.group].filtered += 1
      summary.filter_reasons[reason] = summary.filter_reasons.get(reason, 0) + 1
      retry.append(it)
      continue
    summary.groups[it.group].generated += 1
    if manifest_file is None:
      continue  # Not host 0: the image is written there.
    y, b = spec.groups[it.group]
    rel = relative_image_path(spec, y, b, it.index)
    path = os.path.join(base, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    png = io.BytesIO()  # the same bytes for the same image and Pillow
    Image.fromarray(image, "RGB").save(png, format="PNG")
    files.append((path, png.getvalue()))
    records.append(ManifestRecord(
        file=rel, cls=spec.class_names[y], bias=spec.bias_names[b],
        index=it.index, prompt=prompt, seed=s, generator=generator.name))
  if manifest_file is not None:
    _write_files_durably(files)
    if records:  # appended and fsynced once: a crash loses at most this batch
      manifest_file.write("".join(r.to_json() + "\n" for r in records))
      manifest_file.flush()
      os.fsync(manifest_file.fileno())
  return retry


@dataclasses.dataclass
class VerifyReport:
  """What :func:`verify` found; ``ok`` when nothing is wrong."""
  records: int = 0
  per_group: dict[str, int] = dataclasses.field(default_factory=dict)
  missing: list[str] = dataclasses.field(default_factory=list)
  orphans: list[str] = dataclasses.field(default_factory=list)
  duplicates: list[str] = dataclasses.field(default_factory=list)
  unreadable: dict[str, str] = dataclasses.field(default_factory=dict)
  temp_files: list[str] = dataclasses.field(default_factory=list)
  torn_last_line: bool = False
  # Groups with fewer usable (listed, present, decoding) images than needed:
  # ``{group name: (usable, needed)}``; only checked when needs are given.
  short: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)

  @property
  def ok(self) -> bool:
    return not (self.missing or self.orphans or self.duplicates
                or self.unreadable or self.temp_files or self.torn_last_line
                or self.short)

  def text(self) -> str:
    lines = [f"{self.records} images listed; "
             + ", ".join(f"{k} {v}" for k, v in self.per_group.items())]
    for name in ("missing", "orphans", "duplicates", "temp_files"):
      items = getattr(self, name)
      if items:
        lines.append(f"{name}: {len(items)}, e.g. {items[:3]}")
    if self.unreadable:
      first = list(self.unreadable.items())[:3]
      lines.append(f"unreadable: {len(self.unreadable)}, e.g. {first}")
    if self.torn_last_line:
      lines.append("the manifest ends with a torn line (an interrupted write)")
    if self.short:
      lines.append(f"short: {len(self.short)} groups have fewer usable images "
                   "than the config needs: " + ", ".join(
                       f"{k} {have}/{need}" for k, (have, need) in self.short.items()))
    lines.append("OK" if self.ok else
                 "PROBLEMS: rerun the generation command to repair them.")
    return "\n".join(lines)


def _check(out_root: str, spec: DatasetSpec
           ) -> tuple[VerifyReport, list[ManifestRecord]]:
  """The report (less ``short``) and the first record of each listed image."""
  base = dataset_dir(out_root, spec)
  report = VerifyReport()
  path = os.path.join(base, MANIFEST)
  records, seen = [], set()
  if os.path.isfile(path):
    with open(path, "rb") as f:
      data = f.read()
    report.torn_last_line = bool(data) and not data.endswith(b"\n")
    for rec in read_manifest(out_root, spec):
      report.records += 1
      key = (rec.cls, rec.bias, rec.index)
      if key in seen:
        report.duplicates.append(rec.file)
        continue
      seen.add(key)
      records.append(rec)
      if not os.path.isfile(os.path.join(base, rec.file)):
        report.missing.append(os.path.normpath(rec.file))
  counts = collections.Counter(f"{r.cls}/{r.bias}" for r in records)
  report.per_group = {spec.group_name(g): counts[spec.group_name(g)]
                      for g in range(len(spec.groups))}
  listed = {os.path.normpath(r.file) for r in records}
  pngs, report.temp_files = _image_files(base, spec)
  report.orphans = [p for p in pngs if os.path.normpath(p) not in listed]
  present = sorted(listed - set(report.missing))
  bad = find_unreadable([os.path.join(base, p) for p in present],
                        cache_path=verified_cache_path(out_root, spec))
  report.unreadable = {os.path.relpath(k, base): v for k, v in bad.items()}
  return report, records


def verify(out_root: str, spec: DatasetSpec, needs: Mapping[tuple[int, int], int]
           | None = None) -> VerifyReport:
  """Checks ``{out_root}/{spec.name}`` against its manifest without changing it.

  ``needs``: images each ``(y, b)`` group must hold; groups with fewer usable
  ones are reported as short (None: not checked).
  """
  path = os.path.join(dataset_dir(out_root, spec), MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"No synthetic manifest at {path}: nothing was generated there yet. "
        "Run the generation command without --verify.")
  report, records = _check(out_root, spec)
  if needs is not None:
    broken = set(report.missing) | set(report.unreadable)
    usable = collections.Counter(f"{r.cls}/{r.bias}" for r in records
                                 if os.path.normpath(r.file) not in broken)
    for g, need in enumerate(per_group_counts(spec, needs)):
      have = usable[spec.group_name(g)]
      if have < need:
        report.short[spec.group_name(g)] = (have, need)
  return report
