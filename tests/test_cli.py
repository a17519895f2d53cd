"""The shared command-line layer: ``--help`` with a config (ffr_jax.cli)."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from ffr_jax import cli
from ffr_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS)
def test_every_key_of_every_config_has_a_meaning(path):
  meanings = cli.key_meanings(str(ROOT / path))
  keys = config_lib.flatten(config_lib.load_config_file(str(ROOT / path)))
  assert [k for k in keys if not meanings.get(k)] == []


def test_meanings_come_from_trailing_or_preceding_comments(tmp_path):
  file = tmp_path / "c.py"
  file.write_text(
      "c.a = 1  # trailing\n"
      "# above, line 1\n# line 2\nc.b.x = (\n    2)\n"
      "c.b.y = 3\n"
      "c.a = 4  # a later comment of the same key\n")
  assert cli._assignment_comments(str(file)) == {  # pylint: disable=protected-access
      "a": "trailing", "b.x": "above, line 1 line 2"}


def test_special_values_are_spelled_out():
  meanings = cli.key_meanings(str(ROOT / "configs/spuco.py"))
  assert "-1: train.lr_by_mode's, else the authors' 1e-3 (ASB: 1e-4)" in meanings["train.lr"]
  assert "hf-hub:timm/resnet50.tv_in1k" in meanings["model.pretrained"]
  assert '"none": from scratch' in meanings["model.pretrained"]


def _readme_help_command() -> list[str]:
  readme = (ROOT / "README.md").read_text()
  (line,) = re.findall(r"^python -m ffr_jax\.main .*--help$", readme, re.M)
  return [sys.executable, *shlex.split(line)[1:]]


@pytest.mark.parametrize("extra", [(), ("--workdir=/tmp/x", "--config.train.lr=0.5")])
def test_the_readme_help_command_lists_every_key_with_value_and_meaning(extra):
  proc = subprocess.run(_readme_help_command() + list(extra), capture_output=True,
                        text=True, cwd=ROOT, timeout=300, env=dict(os.environ))
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  keys = config_lib.flatten(config_lib.load_config_file(str(ROOT / "configs/demo.py")))
  listed = dict(re.findall(r"^  --config\.(\S+?)=.*  # (.+)$", out, re.M))
  assert sorted(listed) == sorted(keys)
  assert "?" not in listed.values()
  lr = "0.5" if extra else "-1.0"  # the demo's value, or the override
  assert f"--config.train.lr={lr}  # Adam's rate; -1: train.lr_by_mode's" in out
  assert "mode: asb, ffr, ffr_biased, none, stage1_only, stage2_then_1, usb" in out
  assert "method: afr, dfr, erm, groupdro, jtt, resampling" in out
  assert "(default: 'None')" not in out
  assert "DIR         [" not in out  # the usage line keeps its line break
