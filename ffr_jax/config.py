"""The base configuration every ``configs/*.py`` starts from.

Each config file defines ``get_config(arg)`` that calls :func:`base_config`,
sets dataset-specific values and returns the ConfigDict locked, so an unknown
``--config.key=value`` override is an error rather than a silently new key.
Defaults follow the authors' release (docs/reference.md, "Training").
"""

from __future__ import annotations

import os
import runpy
from collections.abc import Sequence
from typing import Any

import ml_collections

# The authors' learning rate of the stage trained with train.* when
# train.lr is AUTHORS_LR (docs/reference.md, "Training"): 1e-3, except ASB.
AUTHORS_LR = -1.0
# data.bias_ratio that keeps the data as found (the folder dataset's default).
AS_FOUND = -1.0
_AUTHORS_TRAIN_LR = {"asb": 1e-4}

# Settings that change speed, logging or where files go, never a result: a
# stage's plan leaves them out (ffr_jax.training.spec).
SPEED_ONLY_KEYS = frozenset({
    "data.verify_images", "data.cache_images", "data.num_workers",
    "generate.batch_size", "model.conv1x1_as_matmul",
    "model.small_convs_as_matmul", "train.log_every", "train.eval_batch_size",
    "train.checkpoint_every", "train.checkpoint_epochs", "train.stages_dir",
    "data.image_cache_dir"})


def lr_by_mode(text: str) -> dict[str, float]:
  """``"ffr:1e-5,usb:1e-4"`` -> ``{"ffr": 1e-5, "usb": 1e-4}``."""
  out = {}
  for item in filter(None, (t.strip() for t in str(text).split(","))):
    mode, _, value = item.partition(":")
    try:
      out[mode.strip()] = float(value)
    except ValueError:
      raise ValueError(f"config.train.lr_by_mode={text!r}: expected "
                       "'mode:lr,...', e.g. 'ffr:1e-5,usb:1e-4'.") from None
  return out


def train_lr(config: ml_collections.ConfigDict) -> float:
  """``train.lr``; when unset (-1), the mode's ``train.lr_by_mode`` rate, else
  the authors' value for ``config.mode``."""
  lr = float(config.train.lr)
  by_mode = lr_by_mode(config.train.get("lr_by_mode", ""))
  if lr == AUTHORS_LR and str(config.mode) in by_mode:
    return by_mode[str(config.mode)]
  if lr == AUTHORS_LR:
    return _AUTHORS_TRAIN_LR.get(str(config.mode), 1e-3)
  return lr


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all datasets; unlocked so the caller can edit it."""
  c = ml_collections.ConfigDict()
  c.seed = 0                   # seeds initialisation and data order

  c.data = ml_collections.ConfigDict()
  c.data.name = ""             # a key of ffr_jax.data.datasets.DATASETS
  c.data.root = ""             # the dataset's folder on disk ("" only for the built-in benchmark)
  c.data.bias_ratio = 0.95     # majority share of each class in train/val; -1: as found
  c.data.split_seed = 0        # seeds splits and minority dropping, not training
  c.data.image_size = 224      # the authors resize to 224x224, no crop
  c.data.flip = False          # the authors use no augmentation
  c.data.verify_images = True  # decode every file once at load; list bad ones
  c.data.cache_images = False  # keep decoded images in host memory (small sets)
  # Decoded images cached on disk, memory-mapped, reused by later runs:
  # "auto" = $FFR_JAX_CACHE/images (~/.cache/ffr_jax/images), "" = off.
  c.data.image_cache_dir = "auto"
  c.data.num_workers = 0       # grain worker processes (0: decode in threads)
  c.data.synthetic_root = ""   # generated images: {root}/{dataset}/{class}/{bias}
  c.data.synthetic_per_group = -1  # -1: what the mode needs (docs/reference.md, "Synthetic data")

  # A key of ffr_jax.data.compose.MODES: none | usb | asb | ffr, or the
  # paper's ablations stage1_only | stage2_then_1 | ffr_biased. Several,
  # comma-separated, make ffr_jax.main run them all as a sweep.
  c.mode = "none"
  c.method = "erm"             # a key of ffr_jax.training.methods.METHODS

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet50"    # resnet50 | resnet18 | tiny
  # ImageNet weights: a .pth/.safetensors file or hf-hub:ORG/NAME[@REV]
  # (hf-hub:timm/resnet50.tv_in1k is the paper's); "none": from scratch; "":
  # an error on real data, from scratch on the built-in benchmark.
  c.model.pretrained = ""
  c.model.dtype = "float32"    # compute dtype; bfloat16 on accelerators
  # 1x1 convolutions as matmuls: same parameters and outputs; XLA:CPU's conv
  # backward is slow, so this trains faster on CPU and is neutral on GPU
  # (docs/performance.md).
  c.model.conv1x1_as_matmul = True
  # 3x3 convolutions with outputs of at most 2x2 pixels as patches matmuls:
  # same parameters; XLA:CPU's convolution is 10-40x slower there (ResNet50's
  # last stage at 64 px, the tiny model's at 32 px).
  c.model.small_convs_as_matmul = True

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 128     # global batch over all devices and hosts
  c.train.epochs = 50          # epochs of the stage on real data (FFR's stage 2)
  c.train.lr = AUTHORS_LR      # Adam's rate; -1: train.lr_by_mode's, else the authors' 1e-3 (ASB: 1e-4)
  c.train.lr_by_mode = ""      # "mode:lr,...": the rates of these modes when train.lr is -1
  c.train.lr_schedule = "constant"  # "constant" or "cosine" (to 0 over each stage)
  c.train.weight_decay = 1e-5  # Adam with L2 decay, as torch.optim.Adam
  c.train.freeze_bn = False    # FFR stage 2: keep BN statistics from stage 1
  c.train.log_every = 50       # steps between host-side metric logs
  c.train.eval_batch_size = 256  # global batch of evaluation and embedding passes
  c.train.checkpoint_every = 0  # steps between mid-epoch checkpoints (0: epoch ends)
  # Epochs between epoch-end checkpoints; a stage's last epoch and a stop
  # always save (0: only those). Short runs that rerun cheaply save time.
  c.train.checkpoint_epochs = 1
  # Where stages live, one folder per plan ({name}-{fingerprint}), so a stage
  # with the same settings is trained once ("": {workdir}/stages). A sweep
  # points every run at one folder: FFR's stage 1 is then shared by methods.
  c.train.stages_dir = ""
  # A stage that continues another is evaluated before its first step
  # ("epoch 0", always recorded); True also lets epoch 0 be selected.
  c.train.select_epoch0 = False

  # FFR stage 1: ERM on the balanced synthetic set.
  c.stage1 = ml_collections.ConfigDict()
  c.stage1.epochs = 50         # FFR stage 1 epochs (balanced synthetic data)
  c.stage1.lr = 1e-4           # FFR stage 1 learning rate

  # Extra evaluation (the paper's Table 3): a held-out synthetic test set of
  # N images per group, drawn with its own generation seed into its own folder.
  c.eval = ml_collections.ConfigDict()
  c.eval.synthetic_test_per_group = 0  # 0: no synthetic test set
  c.eval.synthetic_test_seed = 1000    # generate.seed of the test images
  c.eval.synthetic_test_root = ""      # "": {data.synthetic_root}-test

  c.groupdro = ml_collections.ConfigDict()
  c.groupdro.eta = 0.01        # step size of the group-weight update
  c.groupdro.size_adjustment = 0.0  # GroupDRO's C: adds C / sqrt(n_g) to each group's loss

  c.dfr = ml_collections.ConfigDict()
  # DFR's inverse L1 strengths, selected on half of val; the authors' grid
  # for every dataset (docs/reference.md, "Methods").
  c.dfr.c_grid = (3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003)
  c.dfr.num_refits = 20        # DFR's last layer: mean of this many refits on balanced subsets

  # JTT (method jtt): ERM for epochs_id epochs finds the error set, which the
  # final training set repeats upsample more times (paper: Waterbirds 60 and
  # 100, CelebA 1 and 50).
  c.jtt = ml_collections.ConfigDict()
  c.jtt.epochs_id = 1          # epochs of the identification model (T)
  c.jtt.upsample = 50          # extra copies of each error-set example (lambda_up)

  # AFR (method afr): ERM on a share of train, then the last layer refit on
  # the held-out rest with weights exp(-gamma p_true); gamma and lambda (pull
  # toward the ERM head) chosen on val (the authors' Waterbirds grid, step 2).
  c.afr = ml_collections.ConfigDict()
  c.afr.heldout = 0.2          # share of train held out for the refit
  c.afr.split_seed = 21        # seeds that split (the authors' fixed 21)
  c.afr.gamma_grid = (4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0)  # gamma tried
  c.afr.lambda_grid = (0.0, 0.1, 0.2, 0.3)  # pull toward the ERM head tried
  c.afr.lr = 0.01              # full-batch gradient descent, clipped to norm 1
  c.afr.steps = 500            # gradient steps of each refit

  c.generate = ml_collections.ConfigDict()
  c.generate.model = ""        # diffusers folder or hub id (Stable Diffusion v1.4)
  c.generate.revision = ""     # hub revision of generate.model ("flax", "bf16"); "": default
  c.generate.generator = "stable_diffusion"  # "stable_diffusion" or "procedural" (built-in benchmark)
  # "paper": "A photo of {bias} {class}"; "rich"; or a template string with
  # {class} and {bias} (configs/folder.py).
  c.generate.prompts = "paper"
  c.generate.per_group = -1    # -1: what FFR/ASB need at this bias ratio
  c.generate.guidance_scale = 7.5  # classifier-free guidance scale
  c.generate.steps = 50        # sampling steps; the authors: 50 for animals, 25 for faces
  c.generate.resolution = 512  # generated image side in pixels
  c.generate.scheduler = "pndm"  # diffusers sampling scheduler
  c.generate.dtype = "float32"  # Stable Diffusion's compute dtype (bfloat16 on TPU)
  c.generate.batch_size = 8    # images per device per sampling call
  c.generate.seed = 0          # each image's noise is a function of seed, group, index
  return c


SMOKE = "smoke"


def apply_arg(config: ml_collections.ConfigDict, arg: str | None) -> None:
  """Applies the ``:arg`` of a config path; unknown args are an error.

  ``smoke`` shrinks a run so that it only checks that everything works: a
  tiny model at 32 px for one epoch.
  """
  if arg in (None, ""):
    return
  if arg != SMOKE:
    raise ValueError(f"Unknown config arg {arg!r}; known args: ({SMOKE!r},).")
  config.data.image_size = 32
  config.model.name = "tiny"
  config.train.epochs = 1
  config.stage1.epochs = 1
  config.train.batch_size = 16
  config.train.eval_batch_size = 16
  if not config.model.pretrained:
    config.model.pretrained = "none"  # the tiny model has no ImageNet weights


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (ConfigDicts and dicts; tuples as lists)."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  out = {}
  for k, v in config.items():
    key = f"{prefix}{k}"
    if isinstance(v, (dict, ml_collections.ConfigDict)):
      out.update(flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def split_config_path(path: str) -> tuple[str, str | None]:
  """``"configs/demo.py:smoke"`` -> ``("configs/demo.py", "smoke")``."""
  file, sep, arg = path.partition(":")
  return file, (arg if sep else None)


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Imports ``path[:arg]`` and returns ``get_config(arg)``, as config_flags does."""
  file, arg = split_config_path(path)
  if not os.path.isfile(file):
    raise FileNotFoundError(
        f"Config file {file!r} not found (relative to {os.getcwd()}); run "
        "from the repository root or give an absolute path.")
  get_config = runpy.run_path(file)["get_config"]
  return get_config(arg) if arg is not None else get_config()


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[tuple[str, Any]]) -> None:
  """Sets dotted keys as ``--config.key=value`` would.

  Raises:
    KeyError: a key the config does not have (the message names it).
    ValueError: a value of the wrong type.
  """
  for key, value in overrides:
    try:
      config.update_from_flattened_dict({key: value})
    except KeyError:
      raise KeyError(f"Unknown config key {key!r}.") from None
    except TypeError as e:
      raise ValueError(f"config.{key}={value!r}: {e}") from None
