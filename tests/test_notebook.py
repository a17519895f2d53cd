"""notebooks/ffr_colab.ipynb executes end to end on CPU and shows its figures.

The notebook's parameter cell (tagged ``parameters``) is replaced: no install,
this checkout, a smoke config, a workdir in ``tmp_path``.
"""

from __future__ import annotations

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "ffr_colab.ipynb"
# What the notebook's real-data path uses on a TPU (the README's hub-id commands).
HUB_WEIGHTS = "hf-hub:timm/resnet50.tv_in1k"
HUB_SD = "CompVis/stable-diffusion-v1-4"
HUB_SD_REVISION = "flax"


def _parameters(workdir: pathlib.Path, modes: str, per_group: int,
                masks: int) -> str:
  return "\n".join([
      "REPO_URL = ''",
      f"REPO_DIR = {str(ROOT)!r}",
      "INSTALL = False",
      "CONFIG = 'configs/demo.py:smoke'",
      f"OVERRIDES = {{'mode': {modes!r}}}",
      f"WORKDIR = {str(workdir)!r}",
      f"ANALYSIS_PER_GROUP = {per_group}",
      "RISE_IMAGES = 'sample:1'",
      f"RISE_MASKS = {masks}",
      "REAL_DATA = False",  # the demo path: nothing is downloaded
      f"PRETRAINED = {HUB_WEIGHTS!r}",
      f"SD_MODEL = {HUB_SD!r}",
      f"SD_REVISION = {HUB_SD_REVISION!r}",
  ])


def _execute(tmp_path: pathlib.Path, modes: str, per_group: int, masks: int):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one 'parameters' cell"
  tagged[0].source = _parameters(tmp_path / "runs", modes, per_group, masks)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(ROOT)}})
  client.execute()
  return nb


def _png_outputs(nb) -> int:
  return sum("image/png" in out.get("data", {})
             for cell in nb.cells if cell.cell_type == "code"
             for out in cell.get("outputs", []))


def _check(nb, workdir: pathlib.Path, runs: list[str]) -> None:
  analysis = workdir / "analysis"
  for name in ("embeddings.png", "embeddings.json", "rise_page1.png", "rise.json"):
    assert (analysis / name).stat().st_size > 0, name
  for mode in runs:  # the sweep layout of a run with comma lists
    assert (workdir / "runs" / f"mode={mode}" / "method=erm" / "results.json"
            ).is_file()
  # The summary chart, the t-SNE and the RISE grid, shown inline.
  assert _png_outputs(nb) >= 3
  text = "".join(out.get("data", {}).get("text/markdown", "")
                 for cell in nb.cells if cell.cell_type == "code"
                 for out in cell.get("outputs", []))
  assert "| ffr | erm |" in text and "probe" in text


def test_real_data_cell_sets_the_hub_ids_through_config_keys():
  """The TPU real-data path: the parameter cell's hub ids are valid config values."""
  from ffr_jax import hub
  from ffr_jax.analysis import notebook
  nb = nbformat.read(NOTEBOOK, as_version=4)
  params: dict = {}
  exec([c for c in nb.cells if "parameters" in c.metadata.get("tags", [])][0].source,
       params)  # pylint: disable=exec-used
  assert params["REAL_DATA"] is False  # the executed demo stays download-free
  assert (params["PRETRAINED"], params["SD_MODEL"], params["SD_REVISION"]) == (
      HUB_WEIGHTS, HUB_SD, HUB_SD_REVISION)
  cell = [c.source for c in nb.cells if '"generate.revision": SD_REVISION' in c.source]
  assert len(cell) == 1 and '"model.pretrained": PRETRAINED' in cell[0]
  config = notebook.load_config(str(ROOT / "configs" / "spuco.py"), {
      "model.pretrained": HUB_WEIGHTS, "generate.model": HUB_SD,
      "generate.revision": HUB_SD_REVISION})
  assert hub.parse_hub_ref(config.model.pretrained).repo_id == "timm/resnet50.tv_in1k"
  assert hub.looks_like_repo_id(config.generate.model)


def test_notebook_runs_on_cpu_two_modes(tmp_path):
  """The fast variant: two modes (none, ffr), few images and masks."""
  nb = _execute(tmp_path, "none,ffr", per_group=10, masks=128)
  _check(nb, tmp_path / "runs", ["none", "ffr"])


@pytest.mark.slow
def test_notebook_runs_on_cpu_all_modes(tmp_path):
  """The demo's four modes at smoke size, as a user would first run it."""
  nb = _execute(tmp_path, "none,usb,asb,ffr", per_group=20, masks=1000)
  _check(nb, tmp_path / "runs", ["none", "usb", "asb", "ffr"])


def _run_source_cell(params: dict) -> dict:
  nb = nbformat.read(NOTEBOOK, as_version=4)
  (cell,) = [c for c in nb.cells if "def find_source" in c.source]
  scope = dict(params)
  exec(cell.source, scope)  # pylint: disable=exec-used
  return scope


def test_without_a_source_the_install_cell_says_what_to_do(tmp_path):
  with pytest.raises(SystemExit, match=r"No ffr_jax source at .*: upload the repository "
                     r"and unzip it there .* or set REPO_URL"):
    _run_source_cell({"REPO_URL": "", "REPO_DIR": str(tmp_path / "ffr_jax"),
                      "INSTALL": True})


def test_an_uploaded_zip_is_the_source(tmp_path, monkeypatch):
  import zipfile  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(tmp_path / "ffr_jax.zip", "w") as z:
    z.writestr("ffr_jax-main/pyproject.toml", "[project]\n")  # GitHub's zip layout
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr("sys.path", list(__import__("sys").path))
  scope = _run_source_cell({"REPO_URL": "", "REPO_DIR": str(tmp_path / "ffr_jax"),
                            "INSTALL": False})
  assert (tmp_path / "ffr_jax" / "pyproject.toml").is_file()
  assert scope["REPO_DIR"] == str(tmp_path / "ffr_jax")
