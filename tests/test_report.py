"""Selection, aggregation and the report, on hand-made results.json trees."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

from ffr_jax import report as report_command
from ffr_jax.reporting import aggregate as agg
from ffr_jax.reporting import claims
from ffr_jax.reporting import paper_report
from ffr_jax.reporting.aggregate import Cell

from conftest import ROOT


def _result(mode, method, seed, *, ratio=0.99, dataset="demo", val=0.5,
            wa=0.5, ba=0.8, lr=1e-3, strength=0.5, syn=None, selection=None):
  """A results.json; ``selection`` defaults to ``val`` (DFR: its backbone's)."""
  source = "backbone_val" if method == "dfr" else "val"
  r = {
      "schema_version": 1, "dataset": dataset, "bias_ratio": ratio,
      "mode": mode, "method": method, "seed": seed,
      "selection": {"worst_group_acc": val if selection is None else selection,
                    "source": source},
      "val": {"worst_group_acc": val, "balanced_acc": 0.9},
      "test": {"worst_group_acc": wa, "balanced_acc": ba},
      "config": {"seed": seed, "mode": mode, "method": method,
                 "data": {"name": dataset, "bias_ratio": ratio,
                          "root": f"/tmp/{seed}/{mode}"},
                 "train": {"lr": lr, "stages_dir": f"/s/{seed}"},
                 "benchmark": {"strength": strength}},
  }
  if syn is not None:
    r["synthetic_test"] = {"worst_group_acc": syn[0], "balanced_acc": syn[1]}
  return r


def _write(root, results):
  for i, r in enumerate(results):
    d = os.path.join(root, "runs", f"{r['dataset']}-{r['bias_ratio']}",
                     f"{r['mode']}-{r['method']}", f"{i}")
    os.makedirs(d)
    with open(os.path.join(d, "results.json"), "w") as f:
      json.dump(r, f)


def _sweep_file(tmp_path, body: str):
  """A sweep config file: demo.py, no fixed settings, then ``body``."""
  sweep = tmp_path / "sweep.py"
  sweep.write_text(
      "import ml_collections\n"
      "def get_config():\n"
      "  c = ml_collections.ConfigDict()\n"
      "  c.config = 'configs/demo.py'\n"
      "  c.fixed = ()\n" + body + "  return c\n")
  return sweep


def _sd(values):
  return statistics.stdev(values)  # sample std, ddof=1


def test_selection_picks_the_best_mean_val_wa_over_seeds():
  # lr 1e-2 has the single best seed (0.9) but the worse mean (0.37 < 0.5).
  records = [agg.record_from_results(r) for r in (
      [_result("ffr", "erm", s, val=v, wa=w, lr=1e-2)
       for s, v, w in ((0, 0.9, 0.1), (1, 0.1, 0.2), (2, 0.1, 0.3))] +
      [_result("ffr", "erm", s, val=0.5, wa=w, lr=1e-3)
       for s, w in ((0, 0.6), (1, 0.7), (2, 0.8))])]
  sel = agg.select(records)
  (cell,) = sel
  assert cell == Cell((), "demo", 0.99, "ffr", "erm")
  chosen = sel[cell]
  assert chosen.hparams == (("train.lr", 1e-3),)
  assert sorted(chosen.runs) == [0, 1, 2]
  st = chosen.metric("test_wa")
  assert st.mean == pytest.approx(0.7) and st.std == pytest.approx(0.1)
  assert [round(score, 4) for _, score, _ in chosen.candidates] == [
      0.5, round((0.9 + 0.1 + 0.1) / 3, 4)]


def test_selection_compares_candidates_on_their_common_seeds():
  # lr 1e-2 has only seed 0 (val 0.8); on seed 0 lr 1e-3 scores 0.9, even
  # though its mean over all of its seeds (0.9, 0.1, 0.1) is lower than 0.8.
  records = [agg.record_from_results(r) for r in (
      [_result("usb", "erm", 0, val=0.8, lr=1e-2)] +
      [_result("usb", "erm", s, val=v, lr=1e-3)
       for s, v in ((0, 0.9), (1, 0.1), (2, 0.1))])]
  (chosen,) = agg.select(records).values()
  assert chosen.hparams == (("train.lr", 1e-3),) and len(chosen.runs) == 3


def test_complete_seeds_keeps_only_the_seeds_every_candidate_ran():
  # A sweep stopped early: lr 1e-2 ran seeds 0-1, lr 1e-3 seeds 0-2; ASB is
  # another cell, complete at seeds 0-2.
  records = [agg.record_from_results(r) for r in (
      [_result("usb", "erm", s, lr=1e-2) for s in (0, 1)] +
      [_result(m, "erm", s, lr=1e-3) for m in ("usb", "asb") for s in range(3)])]
  kept = agg.complete_seeds(records)
  assert sorted((r.mode, r.lr, r.seed) for r in kept) == [
      ("asb", 1e-3, 0), ("asb", 1e-3, 1), ("asb", 1e-3, 2),
      ("usb", 1e-3, 0), ("usb", 1e-3, 1), ("usb", 1e-2, 0), ("usb", 1e-2, 1)]


def test_dfr_cells_are_chosen_on_the_backbone_val_not_the_refit_val():
  # lr 1e-2's refit head scores 0.95 on val, the data it was fitted on, but
  # its backbone's val WA (the selection score) is the lower one.
  records = [agg.record_from_results(r) for r in (
      [_result("ffr", "dfr", s, val=0.95, selection=0.3, wa=0.2, lr=1e-2)
       for s in range(2)] +
      [_result("ffr", "dfr", s, val=0.6, selection=0.5, wa=0.7, lr=1e-3)
       for s in range(2)])]
  sel = agg.select(records)
  (chosen,) = sel.values()
  assert chosen.hparams == (("train.lr", 1e-3),)
  assert [score for _, score, _ in chosen.candidates] == [0.5, 0.3]
  row = paper_report.cells_table(sel).splitlines()[-1]
  assert "| `backbone_val` | 50.0 ± 0.0 | 60.0 ± 0.0 | 70.0 ± 0.0 |" in row


def test_results_without_a_selection_score_are_an_error(tmp_path):
  r = _result("none", "erm", 0)
  del r["selection"]
  _write(tmp_path, [r])
  with pytest.raises(ValueError, match=r"results\.json: no 'selection'"):
    agg.load_records(str(tmp_path))


def test_conditions_split_cells_and_paths_do_not():
  records = [agg.record_from_results(r) for r in (
      _result("usb", "erm", 0, strength=0.0),
      _result("usb", "erm", 0, strength=0.5),
      _result("usb", "erm", 1, strength=0.5))]
  hkeys, ckeys = agg.split_keys(records)
  # data.root, train.stages_dir and the seed differ too, but are not settings.
  assert (hkeys, ckeys) == ([], ["benchmark.strength"])
  sel = agg.select(records)
  assert sorted(len(s.runs) for s in sel.values()) == [1, 2]
  # The side-by-side table: one row, a WA/BA pair per strength.
  table = paper_report.conditions_table(sel)
  assert "benchmark.strength=0.0 WA" in table
  assert table.splitlines()[-1] == (
      "| demo | 99% | usb | erm | 50.0 (n=1) | 80.0 (n=1) | 50.0 ± 0.0 | "
      "80.0 ± 0.0 |")
  # A table with nothing in it says so instead of a grid of dashes.
  assert paper_report.rows_table(sel, (("benchmark.strength", 0.0),),
                                 paper_report.TABLE1_ROWS,
                                 paper_report.WA_BA) == "_No runs for this table._"


def test_duplicate_runs_of_one_setting_are_an_error():
  records = [agg.record_from_results(_result("none", "erm", 0), path=p)
             for p in ("a", "b")]
  with pytest.raises(ValueError, match="same setting and seed"):
    agg.select(records)


def test_average_is_per_seed_over_cells_and_missing_stays_missing():
  records = [agg.record_from_results(r) for r in (
      [_result("ffr", "erm", s, ratio=0.95, wa=w) for s, w in
       ((0, 0.2), (1, 0.4))] +
      [_result("ffr", "erm", s, ratio=0.99, wa=w) for s, w in
       ((0, 0.6), (1, 1.0), (2, 0.1))])]
  sel = agg.select(records)
  cells = [Cell((), "demo", r, "ffr", "erm") for r in (0.95, 0.99)]
  st = agg.average(sel, cells, "test_wa")
  # Seed 2 lacks 0.95, so only seeds 0 and 1: averages 0.4 and 0.7.
  assert st.n == 2
  assert st.mean == pytest.approx(0.55)
  assert st.std == pytest.approx(_sd([0.4, 0.7]))
  assert agg.average(sel, cells + [Cell((), "demo", 0.9, "ffr", "erm")],
                     "test_wa") is None
  assert agg.average(sel, cells, "syn_wa") is None  # no synthetic test set
  assert agg.fmt(None) == "—"
  assert agg.stat([0.5]).format() == "50.0 (n=1)"


def _paper_like_tree(root):
  """Two ratios x 3 seeds; ERM for all modes, GroupDRO for none only."""
  results = []
  values = {}
  for ratio in (0.95, 0.99):
    for mode in ("none", "usb", "asb", "ffr", "stage1_only", "stage2_then_1"):
      for seed in range(3):
        wa = round(0.1 * seed + 0.3 * (mode == "ffr") + 0.05 * (ratio == 0.95),
                   4)
        ba = round(0.6 + 0.1 * seed, 4)
        syn = (0.8 + 0.01 * seed, 0.9) if mode in ("usb", "asb", "ffr") else None
        results.append(_result(mode, "erm", seed, ratio=ratio, wa=wa, ba=ba,
                               syn=syn))
        values[(ratio, mode, seed)] = (wa, ba)
    for seed in range(3):
      results.append(_result("none", "groupdro", seed, ratio=ratio, wa=0.5,
                             ba=0.7))
  _write(root, results)
  return values


def test_report_tables_hold_the_inputs_mean_and_std(tmp_path):
  values = _paper_like_tree(tmp_path)
  records = agg.load_records(str(tmp_path))
  assert len(records) == 2 * 6 * 3 + 6
  text = paper_report.write_report(records, str(tmp_path / "out"))
  assert (tmp_path / "out" / "report.md").read_text() == text
  assert (tmp_path / "out" / "figure3.png").stat().st_size > 1000
  assert (tmp_path / "out" / "figure4.png").stat().st_size > 1000

  def cell(mean, std):
    return f"{100 * mean:.1f} ± {100 * std:.1f}"

  # Figure 3's table: ffr at 99%, WA and BA over the three seeds.
  wa = [values[(0.99, "ffr", s)][0] for s in range(3)]
  ba = [values[(0.99, "ffr", s)][1] for s in range(3)]
  fig3 = paper_report.figure3_table(agg.select(records), ())
  row = next(l for l in fig3.splitlines() if l.startswith("| demo | 99% |"))
  assert row.endswith(f"| {cell(statistics.mean(wa), _sd(wa))} | "
                      f"{cell(statistics.mean(ba), _sd(ba))} |")
  # Table 1, stage2_then_1: per-seed means over both ratios, then mean ± std.
  per_seed = [(values[(0.95, "stage2_then_1", s)][0] +
               values[(0.99, "stage2_then_1", s)][0]) / 2 for s in range(3)]
  line = next(l for l in text.splitlines() if "(`stage2_then_1`)" in l)
  assert f"| {cell(statistics.mean(per_seed), _sd(per_seed))} |" in line
  # Figure 4: GroupDRO ran with mode none only; the other modes are missing.
  f4 = paper_report.figure4_table(agg.select(records), ())
  gdro = next(l for l in f4.splitlines() if l.startswith("| GroupDRO |"))
  assert gdro == "| GroupDRO | 50.0 ± 0.0 | — | — | — |"
  # Table 2 has no ffr_biased runs: missing, not zero.
  biased = next(l for l in text.splitlines() if "(`ffr_biased`)" in l)
  assert biased.count("—") == 2 and "0.0" not in biased
  # Table 3: the synthetic test columns for ffr.
  syn = [0.8 + 0.01 * s for s in range(3)]
  t3 = next(l for l in text.splitlines() if l.startswith("| FFR (`ffr`)"))
  assert f"| {cell(statistics.mean(syn), _sd(syn))} | 90.0 ± 0.0 |" in t3
  assert "sample standard deviation (ddof=1)" in text
  assert paper_report.SELECTION_NOTE in text


def test_report_command_writes_the_report(tmp_path):
  _paper_like_tree(tmp_path)
  out = subprocess.run(
      [sys.executable, "-m", "ffr_jax.report", f"--workdir={tmp_path}",
       f"--out={tmp_path / 'rep'}", "--title=Demo"], cwd=ROOT,
      capture_output=True, text=True, check=True).stdout
  assert "42 runs" in out
  assert (tmp_path / "rep" / "report.md").read_text().startswith("# Demo")
  empty = tmp_path / "empty"
  empty.mkdir()
  proc = subprocess.run([sys.executable, "-m", "ffr_jax.report",
                         f"--workdir={empty}"], cwd=ROOT, capture_output=True,
                        text=True, check=False)
  assert proc.returncode != 0 and "No results.json" in proc.stderr


# --- The claims' statistics ---------------------------------------------------


def test_signed_rank_p_is_the_exact_test_on_known_answers():
  # All 12 signs positive: 1 of 2**12 sign patterns, two-sided.
  assert claims.signed_rank_p([5.0] * 12) == pytest.approx(2 * 0.5 ** 12)
  assert claims.signed_rank_p([4.0, -4.0] * 6) == 1.0  # symmetric
  assert claims.signed_rank_p([0.0] * 5) == 1.0
  # Zeros dropped; five tied |4| (mid-rank 3) and one 8 (rank 6): the negative
  # rank sum 3 or less has 6 of 64 patterns (none, or one of the five 4s).
  assert claims.signed_rank_p([0, 0, 4, 4, 8, -4, 4, 4]) == pytest.approx(
      2 * 6 / 64)
  # No ties: ranks 1..12 with rank 12 negative; P(negative sum >= 66) is the
  # number of subsets of 1..12 summing to <= 12 (35) over 4096, twice.
  assert claims.signed_rank_p(list(range(1, 12)) + [-12]) == pytest.approx(
      2 * 70 / 4096)


def test_holm_and_bootstrap_on_known_values():
  assert claims.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx(
      [0.03, 0.06, 0.06, 0.02])
  assert claims.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
  assert claims.bootstrap_interval([5.0] * 12) == pytest.approx((5.0, 5.0))
  low, high = claims.bootstrap_interval([4.0, -4.0] * 6)
  assert low < 0 < high
  assert (low, high) == claims.bootstrap_interval([4.0, -4.0] * 6)  # seeded


def test_claims_are_labelled_by_the_paired_tests():
  # Four ratios x 3 seeds = 12 pairs. FFR - USB is +5 WA every time; FFR -
  # ASB alternates +-4; USB's BA - WA gap is 5 points below FFR's every time.
  results = []
  for ratio in (0.9, 0.95, 0.96, 0.97):
    for seed in range(3):
      sign = 1 if (seed + int(100 * ratio)) % 2 else -1
      results += [_result("ffr", "erm", seed, ratio=ratio, wa=0.55, ba=0.9),
                  _result("usb", "erm", seed, ratio=ratio, wa=0.5, ba=0.8),
                  _result("asb", "erm", seed, ratio=ratio, wa=0.55 + 0.04 * sign,
                          ba=0.9 + 0.04 * sign)]
  sel = agg.select([agg.record_from_results(r) for r in results])
  got = {r.claim.text: r for r in claims.evaluate(sel, ())}
  usb = got["FFR beats USB with ERM"]
  assert usb.diffs.size == 12 and usb.diffs.mean() == pytest.approx(5.0)
  assert usb.p == pytest.approx(2 * 0.5 ** 12)
  # Four claims have pairs (the two gaps too); two of them at p = 2**-11.
  assert usb.p_holm == pytest.approx(4 * 2 * 0.5 ** 12)
  assert usb.verdict == "supported"
  assert got["FFR beats ASB with ERM"].verdict == "not resolved"
  assert got["FFR beats ASB with ERM"].p == 1.0
  assert (got["Table 3: FFR's real BA - WA gap is smaller than USB's"].verdict
          == "contradicted")
  at99 = got["FFR beats USB with ERM at >= 99% bias"]
  assert at99.diffs.size == 0 and at99.p is None
  table = claims.table(list(got.values()))
  assert "| FFR beats USB with ERM | ffr/erm test_wa | usb/erm test_wa | 12 | " \
         "+5.0 | [+5.0, +5.0] | 0.00049 | 0.002 | **supported** |" in table


# --- runs.jsonl ---------------------------------------------------------------


def test_runs_jsonl_rebuilds_the_workdirs_report(tmp_path):
  work = tmp_path / "work"
  _paper_like_tree(work)
  # A second learning rate for FFR at 99%, better on val: selection must see it.
  _write(work / "more", [_result("ffr", "erm", s, val=0.9, wa=0.2, lr=1e-4)
                         for s in range(3)])
  report = [sys.executable, "-m", "ffr_jax.report"]
  subprocess.run(report + [f"--workdir={work}", f"--out={tmp_path / 'a'}"],
                 cwd=ROOT, capture_output=True, text=True, check=True)
  rows = [json.loads(l) for l in (work / "runs.jsonl").read_text().splitlines()]
  assert len(rows) == 45
  row = next(r for r in rows if r["run"].startswith("more/"))
  assert {k: row[k] for k in ("mode", "method", "lr", "grid", "test_wa",
                              "settings")} == {
      "mode": "ffr", "method": "erm", "lr": 1e-4, "grid": "planned",
      "test_wa": 0.2, "settings": {"train.lr": 1e-4}}
  subprocess.run(report + [f"--runs={work / 'runs.jsonl'}",
                           f"--out={tmp_path / 'b'}"],
                 cwd=ROOT, capture_output=True, text=True, check=True)
  text = (tmp_path / "a" / "report.md").read_text()
  assert (tmp_path / "b" / "report.md").read_text() == text
  assert "train.lr=0.0001 of" in text and "## The paper's claims, tested" in text
  assert sorted(os.listdir(tmp_path / "b")) == sorted(os.listdir(tmp_path / "a"))


def test_runs_are_labelled_planned_or_extension_by_the_sweep(tmp_path):
  sweep = _sweep_file(
      tmp_path, "  c.grid = ({'mode': ('ffr',), 'seed': (0, 1)},\n"
      "            {'mode': ('ffr', 'usb'), 'seed': (0,)})\n"
      "  c.planned = 1\n")
  assert report_command.planned_runs(str(sweep)) == {"mode=ffr/seed=0",
                                                     "mode=ffr/seed=1"}
  for mode in ("ffr", "usb"):
    run = tmp_path / "runs" / f"mode={mode}" / "seed=0"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(_result(mode, "erm", 0)))
  subprocess.run([sys.executable, "-m", "ffr_jax.report",
                  f"--workdir={tmp_path}", f"--sweep={sweep}"], cwd=ROOT,
                 capture_output=True, text=True, check=True)
  rows = agg.load_runs(str(tmp_path / "runs.jsonl"))
  assert [(r.mode, r.grid) for r in rows] == [("ffr", "planned"),
                                              ("usb", "extension")]
  (tmp_path / "bad.jsonl").write_text('{"run": "x"}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl:1: not a run"):
    agg.load_runs(str(tmp_path / "bad.jsonl"))


def test_a_methods_own_settings_are_chosen_on_validation():
  runs = []
  for upsample, val in ((20, 0.4), (50, 0.6)):
    r = _result("none", "jtt", 0, val=val)
    r["config"]["jtt"] = {"upsample": upsample, "epochs_id": 1}
    runs.append(agg.record_from_results(r))
  hkeys, ckeys = agg.split_keys(runs)
  assert (hkeys, ckeys) == (["jtt.upsample"], [])
  (selection,) = agg.select(runs).values()
  assert selection.hparams == (("jtt.upsample", 50),)


def test_controls_are_cells_of_their_own_and_never_ffrs_candidates(tmp_path):
  # A frozen-BN run and an lr-0 run win on val at every seed: as candidates they
  # would be chosen for FFR; as controls they are compared with it instead.
  sweep = _sweep_file(
      tmp_path, "  c.grid = ()\n"
      "  c.controls = (('bn_only', (('train.lr', 0.0),)),\n"
      "                ('frozen_bn', (('train.freeze_bn', True),)))\n")
  runs = []
  for seed in range(3):
    for ratio in (0.97, 0.99):
      for lr, frozen, val, wa in ((1e-3, False, 0.5, 0.6), (1e-5, False, 0.6, 0.7),
                                  (0.0, False, 0.9, 0.3), (1e-3, True, 0.9, 0.5),
                                  (1e-5, True, 0.95, 0.4)):
        r = _result("ffr", "erm", seed, ratio=ratio, val=val, wa=wa, lr=lr)
        r["config"]["train"]["freeze_bn"] = frozen
        runs.append(r)
  _write(tmp_path, runs)
  subprocess.run([sys.executable, "-m", "ffr_jax.report",
                  f"--workdir={tmp_path}", f"--sweep={sweep}"], cwd=ROOT,
                 capture_output=True, text=True, check=True)
  records = agg.load_runs(str(tmp_path / "runs.jsonl"))
  assert sorted({r.control for r in records}) == ["", "bn_only", "frozen_bn"]
  sel = agg.select(records)
  main = sel[Cell((), "demo", 0.99, "ffr", "erm")]
  assert dict(main.hparams) == {"train.lr": 1e-5, "train.freeze_bn": False}
  assert len(main.candidates) == 2
  frozen = sel[Cell((("control", "frozen_bn"),), "demo", 0.99, "ffr", "erm")]
  assert dict(frozen.hparams)["train.lr"] == 1e-5
  got = {r.claim.text: r for r in claims.controls(records, sel, ())}
  assert got["FFR (selected) against bn_only (selected)"].diffs.tolist() == \
      pytest.approx([40.0] * 6)
  assert got["FFR at lr 0.001 against bn_only"].diffs.mean() == pytest.approx(30)
  assert got["FFR at lr 1e-05 against frozen_bn at lr 1e-05"].diffs.mean() == \
      pytest.approx(30)
  assert got["FFR at lr 1e-05 against frozen_bn at lr 1e-05"].p == \
      pytest.approx(2 * 0.5 ** 6)
  text = (tmp_path / "report" / "report.md").read_text()
  assert "## Controls" in text and "Condition: control" not in text


def test_every_condition_gets_its_own_claims_table(tmp_path):
  # The main condition (most cells) has GroupDRO runs too; the other one ERM
  # only, where FFR loses to USB at every seed.
  runs = []
  for seed in range(10):
    for strength, ffr_wa in ((0.5, 0.7), (1.0, 0.3)):
      runs += [_result("ffr", "erm", seed, wa=ffr_wa, strength=strength),
               _result("usb", "erm", seed, wa=0.5, strength=strength)]
    runs.append(_result("usb", "groupdro", seed, wa=0.6))
  text = paper_report.write_report(
      [agg.record_from_results(r) for r in runs], str(tmp_path))
  main, _, other = text.partition("## Condition: benchmark.strength=1.0")
  row = "| FFR beats USB with ERM | ffr/erm test_wa | usb/erm test_wa | 10 |"
  assert main.count("claims under this condition") == 0
  assert row + " +20.0 |" in main
  assert other.count("### The paper's claims under this condition") == 1
  claims_table = other.partition("### Figure 3")[0]
  assert row + " -20.0 |" in claims_table and "**contradicted**" in claims_table
  assert "groupdro" not in claims_table  # no pairs there: left out


def test_a_ratio_kept_as_found_is_labelled_so_not_minus_100_percent():
  records = [agg.record_from_results(_result(m, "erm", 0, ratio=-1.0))
             for m in ("none", "ffr")]
  sel = agg.select(records)
  text = paper_report.figure3_table(sel, ()) + paper_report.cells_table(sel)
  assert "as found" in text and "-100%" not in text


def test_runs_at_one_rate_are_one_setting_however_the_config_named_it():
  # Seed 0 set train.lr=1e-3 before train.lr_by_mode existed, seed 1 after
  # (no effect: train.lr is set), seed 2 got 1e-3 from lr_by_mode (lr -1).
  runs = [_result("usb", "erm", s) for s in range(3)]
  runs[1]["config"]["train"]["lr_by_mode"] = "usb:1e-3,ffr:1e-5"
  runs[2]["config"]["train"].update(lr=-1.0, lr_by_mode="usb:1e-3")
  records = [agg.record_from_results(r) for r in runs]
  assert agg.split_keys(records) == ([], [])
  (selection,) = agg.select(records).values()
  assert sorted(selection.runs) == [0, 1, 2]
  assert {r.settings["train.lr"] for r in records} == {1e-3}
