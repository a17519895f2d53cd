"""The synthetic-dataset writer: balance, manifest, determinism, resumption, filter."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ffr_jax.data.synthetic import MANIFEST, load_synthetic, read_manifest
from ffr_jax.data.types import DatasetSpec
from ffr_jax.generation import writer
from ffr_jax.generation.base import Generator

SPEC = DatasetSpec(
    name="toy", class_names=("cat", "dog"), bias_names=("indoors", "outdoors"),
    groups=((0, 0), (0, 1), (1, 0), (1, 1)), majority_bias=(0, 1))
SIZE = 8


@pytest.fixture(autouse=True)
def _private_verification_cache(tmp_path, monkeypatch):
  """Each test's decode-check cache in its own folder, not the user's."""
  monkeypatch.setenv("FFR_JAX_CACHE", str(tmp_path / "ffr_jax_cache"))


class FakeGenerator:
  """Colourful noise from the seed; gray/blank for seeds in ``bad`` patterns.

  ``gray_every``: seeds divisible by it give a gray image, so the filter has
  something to drop. ``delay``: seconds of sleep per call (for kill tests).
  """

  name = "fake"
  image_size = SIZE

  def __init__(self, gray_every: int = 0, delay: float = 0.0):
    self.gray_every = gray_every
    self.delay = delay
    self.calls = 0

  def generate(self, prompts, seeds):
    self.calls += 1
    if self.delay:
      time.sleep(self.delay)
    out = []
    for p, s in zip(prompts, seeds):
      rng = np.random.default_rng([s, len(p)])
      img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
      if self.gray_every and s % self.gray_every == 0:
        img = np.repeat(img[..., :1], 3, axis=-1)
      out.append(img)
    return np.stack(out)


def prompt_fn(g: int, i: int) -> str:
  return f"photo {SPEC.group_name(g)} {i % 3}"


def run(root, per_group=5, batch_size=3, gen=None, **kw):
  return writer.generate_dataset(
      gen or FakeGenerator(), SPEC, per_group, str(root), prompt_fn, seed=7,
      batch_size=batch_size, show_progress=False, **kw)


def folder_bytes(root) -> dict[str, bytes]:
  base = os.path.join(str(root), SPEC.name)
  out = {}
  for rec in read_manifest(str(root), SPEC):
    with open(os.path.join(base, rec.file), "rb") as f:
      out[rec.file] = f.read()
  return out


def manifest_rows(root) -> list[dict]:
  with open(os.path.join(str(root), SPEC.name, MANIFEST)) as f:
    return [json.loads(line) for line in f]


def test_fake_generator_satisfies_protocol():
  assert isinstance(FakeGenerator(), Generator)


def test_balanced_counts_and_manifest(tmp_path):
  summary = run(tmp_path, per_group=5)
  assert [g.generated for g in summary.groups] == [5, 5, 5, 5]
  ex = load_synthetic(str(tmp_path), SPEC)
  assert len(ex) == 20
  for y, b in SPEC.groups:
    assert ex.count(y, b) == 5
  rows = manifest_rows(tmp_path)
  assert {r["index"] for r in rows} == set(range(5))
  for r in rows:
    assert r["file"] == os.path.join(r["class"], r["bias"], f"{r['index']:06d}.png")
    g = SPEC.group_index(SPEC.class_index(r["class"]), SPEC.bias_index(r["bias"]))
    assert r["seed"] == writer.image_seed(7, g, r["index"])
    assert r["prompt"] == prompt_fn(g, r["index"])
    assert r["generator"] == "fake"
  assert writer.verify(str(tmp_path), SPEC).ok
  assert "total" in summary.table()


def test_explicit_per_group_counts(tmp_path):
  counts = {(0, 0): 1, (0, 1): 3, (1, 0): 0, (1, 1): 2}
  run(tmp_path, per_group=counts)
  ex = load_synthetic(str(tmp_path), SPEC)
  assert {k: ex.count(*k) for k in counts} == counts
  with pytest.raises(ValueError, match="missing"):
    run(tmp_path, per_group={(0, 0): 1})


def test_deterministic_across_batch_sizes(tmp_path):
  run(tmp_path / "a", batch_size=1)
  run(tmp_path / "b", batch_size=7)
  a, b = folder_bytes(tmp_path / "a"), folder_bytes(tmp_path / "b")
  assert a == b and len(a) == 20


def test_rerun_is_a_noop_and_growing_adds_only_new(tmp_path):
  run(tmp_path, per_group=3)
  gen = FakeGenerator()
  s = run(tmp_path, per_group=3, gen=gen)
  assert s.generated == 0 and gen.calls == 0
  assert [g.present for g in s.groups] == [3] * 4
  s = run(tmp_path, per_group=5)
  assert s.generated == 8
  run(tmp_path / "ref", per_group=5)
  assert folder_bytes(tmp_path) == folder_bytes(tmp_path / "ref")


def test_settings_mismatch_is_refused(tmp_path):
  run(tmp_path, per_group=2)
  with pytest.raises(ValueError, match="other settings"):
    writer.generate_dataset(FakeGenerator(), SPEC, 2, str(tmp_path), prompt_fn,
                            seed=8, show_progress=False)


def test_filter_drops_gray_and_regenerates(tmp_path):
  gen = FakeGenerator(gray_every=3)
  summary = run(tmp_path, per_group=6, gen=gen)
  assert summary.filtered > 0
  assert summary.filter_reasons == {"grayscale": summary.filtered}
  ex = load_synthetic(str(tmp_path), SPEC)
  assert len(ex) == 24
  for rec in read_manifest(str(tmp_path), SPEC):
    assert rec.seed % 3 != 0  # only accepted seeds are recorded
  for p in ex.path:
    from PIL import Image
    assert writer.reject_reason(np.asarray(Image.open(p))) is None
  # The regenerated images do not depend on the batch size either.
  run(tmp_path / "b1", per_group=6, gen=FakeGenerator(gray_every=3), batch_size=1)
  assert folder_bytes(tmp_path) == folder_bytes(tmp_path / "b1")


def test_filter_gives_up_with_a_clear_error(tmp_path):
  with pytest.raises(RuntimeError, match="rejected by the filter"):
    run(tmp_path, gen=FakeGenerator(gray_every=1), max_attempts=3)


def test_reject_reason():
  rng = np.random.default_rng(0)
  colour = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
  assert writer.reject_reason(colour) is None
  assert writer.reject_reason(np.zeros((16, 16, 3), np.uint8)) == "blank"
  assert writer.reject_reason(np.full((16, 16, 3), (200, 10, 10), np.uint8)) == "blank"
  gray = np.repeat(colour[..., :1], 3, axis=-1)
  assert writer.reject_reason(gray) == "grayscale"
  # A faint colour cast (spread 1-2 levels) is still gray.
  gray_cast = gray.astype(np.int16) + np.array([0, 1, 2])
  assert writer.reject_reason(np.clip(gray_cast, 0, 255).astype(np.uint8)) == "grayscale"


def test_repairs_torn_line_orphan_and_temp_file(tmp_path):
  run(tmp_path / "ref", per_group=4)
  run(tmp_path / "x", per_group=4)
  base = tmp_path / "x" / SPEC.name
  manifest = base / MANIFEST
  lines = manifest.read_text().splitlines()
  # Crash states: the last two images renamed but not listed (orphans), a torn
  # line half-written, and a temporary file of the next image.
  manifest.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:17])
  orphan = json.loads(lines[-1])["file"]
  (base / "cat" / "indoors" / ".000099.png.tmp").write_bytes(b"junk")
  report = writer.verify(str(tmp_path / "x"), SPEC)
  assert not report.ok and report.torn_last_line
  assert orphan in report.orphans and len(report.temp_files) == 1
  summary = run(tmp_path / "x", per_group=4)
  assert summary.generated == 2
  assert summary.removed_orphans == 2 and summary.removed_temp == 1
  assert writer.verify(str(tmp_path / "x"), SPEC).ok
  assert folder_bytes(tmp_path / "x") == folder_bytes(tmp_path / "ref")
  assert len(manifest_rows(tmp_path / "x")) == 16


def test_verify_finds_deleted_file_orphan_duplicate_and_unreadable(tmp_path):
  run(tmp_path, per_group=3)
  base = tmp_path / SPEC.name
  rows = manifest_rows(tmp_path)
  os.remove(base / rows[0]["file"])
  (base / "dog" / "outdoors" / "000042.png").write_bytes(b"not a png")
  (base / rows[1]["file"]).write_bytes(b"broken")
  with open(base / MANIFEST, "a") as f:
    f.write(json.dumps(rows[2]) + "\n")
  report = writer.verify(str(tmp_path), SPEC)
  assert report.missing == [rows[0]["file"]]
  assert report.orphans == [os.path.join("dog", "outdoors", "000042.png")]
  assert report.duplicates == [rows[2]["file"]]
  assert list(report.unreadable) == [rows[1]["file"]]
  assert not report.ok and "PROBLEMS" in report.text()
  # Rerunning repairs the deleted file, the unreadable one and the duplicate.
  summary = run(tmp_path, per_group=3)
  assert summary.generated == 2 and sum(g.repaired for g in summary.groups) == 1
  assert sum(g.unreadable for g in summary.groups) == 1
  assert writer.verify(str(tmp_path), SPEC).ok
  run(tmp_path / "ref", per_group=3)
  assert folder_bytes(tmp_path) == folder_bytes(tmp_path / "ref")


def _damage(path, how: str) -> None:
  """Zero bytes, half the bytes, or zeroed bytes with size and time kept."""
  st = os.stat(path)
  data = open(path, "rb").read()
  damaged = {"empty": b"", "truncated": data[: len(data) // 2],
             "in_place": data[:20] + bytes(len(data) - 20)}[how]
  with open(path, "wb") as f:
    f.write(damaged)
  if how == "in_place":
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_rerun_regenerates_listed_images_that_no_longer_decode(tmp_path):
  # The measured defect: --verify said "rerun to repair"; the rerun changed
  # nothing, since the files were listed and present.
  run(tmp_path / "ref", per_group=4)
  run(tmp_path / "x", per_group=4)
  assert writer.verify(str(tmp_path / "x"), SPEC).ok  # caches the good files
  base = tmp_path / "x" / SPEC.name
  rows = manifest_rows(tmp_path / "x")
  for row, how in zip(rows[:3], ("empty", "truncated", "in_place")):
    _damage(base / row["file"], how)
  assert len(writer.verify(str(tmp_path / "x"), SPEC).unreadable) == 3
  summary = run(tmp_path / "x", per_group=4)
  assert summary.generated == 3 and sum(g.unreadable for g in summary.groups) == 3
  assert "did not decode" in summary.table()
  assert writer.verify(str(tmp_path / "x"), SPEC).ok
  assert folder_bytes(tmp_path / "x") == folder_bytes(tmp_path / "ref")


def test_every_image_damaged_is_regenerated_not_taken_for_a_lost_manifest(tmp_path):
  run(tmp_path, per_group=3)
  for row in manifest_rows(tmp_path):
    _damage(tmp_path / SPEC.name / row["file"], "empty")
  summary = run(tmp_path, per_group=3)
  assert summary.generated == 3 * len(SPEC.groups) and summary.removed_orphans == 0
  assert writer.verify(str(tmp_path), SPEC).ok


def test_load_synthetic_refuses_images_that_do_not_decode(tmp_path):
  run(tmp_path, per_group=3)
  load_synthetic(str(tmp_path), SPEC)  # fine, and caches the good files
  row = manifest_rows(tmp_path)[4]
  _damage(tmp_path / SPEC.name / row["file"], "in_place")
  with pytest.raises(ValueError, match="1 images listed .* do not decode.*Rerun"):
    load_synthetic(str(tmp_path), SPEC)
  assert len(load_synthetic(str(tmp_path), SPEC, check_files=False)) == 12


def test_verify_fails_a_folder_short_of_what_the_config_needs(tmp_path):
  # The measured defect: three groups with 0 images and one with 72 gave OK.
  run(tmp_path, per_group=5, batch_size=5, stop_after=5)
  needs = {g: 5 for g in SPEC.groups}
  assert writer.verify(str(tmp_path), SPEC).ok  # consistent, just unfinished
  report = writer.verify(str(tmp_path), SPEC, needs)
  assert not report.ok
  assert report.short == {"cat/outdoors": (0, 5), "dog/indoors": (0, 5),
                          "dog/outdoors": (0, 5)}
  assert "short: 3 groups" in report.text() and "PROBLEMS" in report.text()
  # An unreadable image does not count towards the need.
  first = manifest_rows(tmp_path)[0]["file"]
  _damage(tmp_path / SPEC.name / first, "empty")
  assert writer.verify(str(tmp_path), SPEC, needs).short["cat/indoors"] == (4, 5)
  run(tmp_path, per_group=5)
  assert writer.verify(str(tmp_path), SPEC, needs).ok
  with pytest.raises(ValueError, match="exactly the groups"):
    writer.verify(str(tmp_path), SPEC, {(0, 0): 5})


def test_verify_of_a_folder_never_generated_is_one_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing was generated"):
    writer.verify(str(tmp_path), SPEC)


_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_generation_writer import FakeGenerator, SPEC, prompt_fn
from ffr_jax.generation import writer
writer.generate_dataset(FakeGenerator(gray_every=4, delay=0.05), SPEC, 30,
                        {root!r}, prompt_fn, seed=7, batch_size=3,
                        show_progress=False)
"""


def _manifest_lines(root) -> int:
  path = os.path.join(str(root), SPEC.name, MANIFEST)
  if not os.path.isfile(path):
    return 0
  with open(path, "rb") as f:
    return f.read().count(b"\n")


@pytest.mark.parametrize("kill_after", [7, 40, 95])
def test_resume_after_sigkill(tmp_path, kill_after):
  root = tmp_path / "killed"
  code = _CHILD.format(tests=os.path.dirname(__file__), root=str(root))
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
  proc = subprocess.Popen([sys.executable, "-c", code], env=env)
  deadline = time.time() + 120
  while _manifest_lines(root) < kill_after and proc.poll() is None:
    assert time.time() < deadline, "child made no progress"
    time.sleep(0.01)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "child finished before the kill"
  killed_at = _manifest_lines(root)
  assert 0 < killed_at < 120
  summary = writer.generate_dataset(
      FakeGenerator(gray_every=4), SPEC, 30, str(root), prompt_fn, seed=7,
      batch_size=5, show_progress=False)
  assert sum(g.present for g in summary.groups) + summary.generated == 120
  run(tmp_path / "ref", per_group=30, gen=FakeGenerator(gray_every=4))
  assert folder_bytes(root) == folder_bytes(tmp_path / "ref")
  assert len(manifest_rows(root)) == 120  # no duplicates
  assert writer.verify(str(root), SPEC).ok


def test_image_seed_is_31_bit_and_distinct():
  seeds = {writer.image_seed(0, g, i, a) for g in range(4) for i in range(50)
           for a in range(3)}
  assert len(seeds) == 600
  assert all(0 <= s < 2**31 for s in seeds)


# --- prompts and counts ---------------------------------------------------------

SPUCO = DatasetSpec(
    name="spuco_animals",
    class_names=("landbird", "waterbird", "small dog", "big dog"),
    bias_names=("land", "water", "indoors", "outdoors"),
    groups=((0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3)),
    majority_bias=(0, 1, 2, 3))


def test_paper_prompts_use_spec_names():
  from ffr_jax.generation import prompts
  fn = prompts.make_prompt_fn(SPUCO, "paper")
  assert fn(SPUCO.group_index(2, 2), 5) == "A photo of indoors small dog"


def test_rich_prompts_are_seeded_and_from_the_group_lists():
  from ffr_jax.generation import prompts
  fn = prompts.make_prompt_fn(SPUCO, "rich", seed=3)
  g = SPUCO.group_index(1, 0)  # waterbird on land
  texts = [fn(g, i) for i in range(40)]
  assert texts == [prompts.make_prompt_fn(SPUCO, "rich", seed=3)(g, i)
                   for i in range(40)]
  assert texts != [prompts.make_prompt_fn(SPUCO, "rich", seed=4)(g, i)
                   for i in range(40)]
  assert len(set(texts)) > 20
  for t in texts:
    assert any(f" {b} in " in t for b in prompts.WATERBIRDS), t
    assert any(t.endswith(f"in {loc}") for loc in prompts.LAND_LOCATIONS), t
  with pytest.raises(ValueError, match="No 'rich' prompt set"):
    prompts.make_prompt_fn(SPEC, "rich")
  with pytest.raises(ValueError, match="Unknown prompt set"):
    prompts.make_prompt_fn(SPUCO, "fancy")


def test_rich_face_prompts():
  from ffr_jax.generation import prompts
  celeba = DatasetSpec("celeba_hq", ("not smiling", "smiling"), ("female", "male"),
                       ((0, 0), (0, 1), (1, 0), (1, 1)), (0, 1))
  fn = prompts.make_prompt_fn(celeba, "rich")
  assert fn(celeba.group_index(1, 1), 0) == "a headshot of male celebrity smiling"
  assert {fn(0, i) for i in range(30)} == {
      "a headshot of female celebrity with serious face",
      "a headshot of female celebrity with straight face"}


def test_default_counts_follow_compose():
  from ffr_jax.data.types import Examples
  from ffr_jax.generation import counts
  sizes = {(0, 0): 100, (0, 1): 5, (1, 0): 10, (1, 1): 60}
  paths, ys, bs = [], [], []
  for (y, b), n in sizes.items():
    paths += [f"{y}{b}_{i}" for i in range(n)]
    ys += [y] * n
    bs += [b] * n
  train = Examples.from_lists(paths, ys, bs)
  # USB adds 0 + 95 + 90 + 40 = 225; ASB/FFR: 225 // 4 = 56 per group.
  assert counts.needed_per_group(SPEC, train) == {g: 56 for g in SPEC.groups}
  both = counts.needed_per_group(SPEC, train, ("usb", "asb", "ffr"))
  assert both == {(0, 0): 56, (0, 1): 95, (1, 0): 90, (1, 1): 56}
  assert counts.needed_per_group(SPEC, train, per_group=7) == {
      g: 7 for g in SPEC.groups}
  assert "total" in counts.describe(SPEC, train, both)


def test_lost_manifest_never_deletes_the_images(tmp_path):
  run(tmp_path, per_group=3)
  base = tmp_path / SPEC.name
  before = {p: p.read_bytes() for p in base.rglob("*.png")}
  assert len(before) == 3 * len(SPEC.groups)
  os.remove(base / "manifest.jsonl")
  with pytest.raises(RuntimeError, match="not listed"):
    run(tmp_path, per_group=2)
  assert {p: p.read_bytes() for p in base.rglob("*.png")} == before


def test_verify_command_exits_1_on_an_unfinished_folder(tmp_path):
  # The measured defect: `--verify` printed OK for groups with 0 images; the
  # command now sizes the groups from the config as generation does.
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  folder = tmp_path / "w" / "synthetic" / "demo"
  folder.mkdir(parents=True)
  (folder / MANIFEST).write_text("")  # started, nothing written yet
  proc = subprocess.run(
      [sys.executable, "-m", "ffr_jax.generate",
       f"--config={os.path.join(root, 'configs', 'demo.py')}:smoke",
       f"--workdir={tmp_path / 'w'}", "--config.generate.per_group=3",
       "--verify"],
      capture_output=True, text=True, timeout=300, cwd=root,
      env=dict(os.environ, FFR_JAX_CACHE=str(tmp_path / "cache")))
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "short: 8 groups" in proc.stdout and "landbird/land 0/3" in proc.stdout
