"""The base configuration every ``configs/*.py`` starts from.

Each config file defines ``get_config(arg)`` that calls :func:`base_config`,
sets dataset-specific values and returns the ConfigDict locked, so an unknown
``--config.key=value`` override is an error rather than a silently new key.
Defaults follow the authors' release (REFERENCE.md, "Training").
"""

from __future__ import annotations

from typing import Any

import ml_collections

MODES = ("none", "usb", "asb", "ffr")
# The paper's ablations (ffr_jax.data.compose): Table 1 (stage1_only,
# stage2_then_1; "stage 2 only" is none) and Table 2 (ffr_biased).
ABLATION_MODES = ("stage1_only", "stage2_then_1", "ffr_biased")
METHODS = ("erm", "groupdro", "resampling", "dfr")


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all datasets; unlocked so the caller can edit it."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = ""             # a key of ffr_jax.data.datasets.DATASETS
  c.data.root = ""             # the dataset's official folder on disk
  c.data.bias_ratio = 0.95     # majority share of each class in train/val
  c.data.split_seed = 0        # seeds splits and minority dropping, not training
  c.data.image_size = 224      # the authors resize to 224x224, no crop
  c.data.flip = False          # the authors use no augmentation
  c.data.verify_images = True  # decode every file once at load; list bad ones
  c.data.cache_images = False  # keep decoded images in host memory (small sets)
  c.data.num_workers = 0       # grain worker processes (0: decode in threads)
  c.data.synthetic_root = ""   # generated images: {root}/{dataset}/{class}/{bias}
  c.data.synthetic_per_group = -1  # -1: what the mode needs (REFERENCE.md)

  c.mode = "none"              # one of MODES or ABLATION_MODES
  c.method = "erm"             # one of METHODS (for stage 2 in mode ffr)

  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet50"    # resnet50 | resnet18 | tiny
  c.model.pretrained = ""      # local ImageNet weights (.pth or .safetensors)
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
  c.train.epochs = 50
  c.train.lr = 1e-3
  c.train.weight_decay = 1e-5  # Adam with L2 decay, as torch.optim.Adam
  c.train.freeze_bn = False    # FFR stage 2: keep BN statistics from stage 1
  c.train.log_every = 50       # steps between host-side metric logs
  c.train.eval_batch_size = 256
  c.train.checkpoint_every = 0  # steps between mid-epoch checkpoints (0: epoch ends)
  # Folder of the shared synthetic pretraining stages (FFR's stage 1; one
  # subfolder per stage name). "": {workdir}/ffr-{stage}. A sweep points runs
  # that need the same stage 1 at one folder, so it is trained once.
  c.train.stage1_dir = ""

  # FFR stage 1: ERM on the balanced synthetic set.
  c.stage1 = ml_collections.ConfigDict()
  c.stage1.epochs = 50
  c.stage1.lr = 1e-4

  # Extra evaluation (the paper's Table 3): a held-out synthetic test set of
  # N images per group, drawn with its own generation seed into its own folder.
  c.eval = ml_collections.ConfigDict()
  c.eval.synthetic_test_per_group = 0  # 0: no synthetic test set
  c.eval.synthetic_test_seed = 1000    # generate.seed of the test images
  c.eval.synthetic_test_root = ""      # "": {data.synthetic_root}-test

  c.groupdro = ml_collections.ConfigDict()
  c.groupdro.eta = 0.01        # step size of the group-weight update
  c.groupdro.size_adjustment = 0.0  # C in C / sqrt(n_g)

  c.dfr = ml_collections.ConfigDict()
  c.dfr.c_grid = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
  c.dfr.num_refits = 20

  c.generate = ml_collections.ConfigDict()
  c.generate.model = ""        # diffusers folder or hub id (Stable Diffusion v1.4)
  c.generate.revision = ""     # hub revision of generate.model ("flax", "bf16"); "": default
  c.generate.generator = "stable_diffusion"  # or "procedural" (built-in benchmark)
  c.generate.prompts = "paper"  # "paper": "A photo of {bias} {class}"; "rich"
  c.generate.per_group = -1    # -1: what FFR/ASB need at this bias ratio
  c.generate.guidance_scale = 7.5
  c.generate.steps = 50
  c.generate.resolution = 512
  c.generate.scheduler = "pndm"
  c.generate.dtype = "float32"
  c.generate.batch_size = 8    # images per device per sampling call
  c.generate.seed = 0
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
