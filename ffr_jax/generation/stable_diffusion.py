"""Stable Diffusion as a :class:`~ffr_jax.generation.base.Generator`, sampled by us.

The modules come from a diffusers folder or a hub id (SD v1.4 in the paper);
one without Flax weights is converted on load (needs torch). The sampling loop
(guidance, scheduler in a ``lax.fori_loop``, VAE decode) is jitted once over
all devices with one global batch shape (the last call is padded).

The initial noise of image ``i`` is ``normal(jax.random.key(seeds[i]))`` and
every later operation is per-sample, so an image depends only on its prompt
and seed. XLA does not promise bitwise identity across batch shapes: on CPU,
float32 images agree up to rare off-by-one pixels (tests/test_stable_diffusion.py).

No safety checker (it needs the CLIP vision model): the writer's blank and
grayscale filter drops the black images it would produce.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import types
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from ffr_jax import hub
from ffr_jax import mesh as mesh_lib

SCHEDULERS = ("pndm", "ddim")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_FLAX_WEIGHTS = ("diffusion_flax_model.msgpack", "flax_model.msgpack")
COMPONENTS = ("tokenizer", "text_encoder", "unet", "vae", "scheduler")
# Weight files of other frameworks, fetched from the hub only where a component
# has no Flax weights (then converted with from_pt=True, which needs torch).
_OTHER_WEIGHTS = ("*.bin", "*.safetensors", "*.ckpt", "*.pt", "*.pth", "*.onnx",
                  "*.onnx_data", "*.h5", "*.ot", "*.pb")
_PT_WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors",
               "diffusion_pytorch_model.bin", "pytorch_model.bin")


def prepare_imports() -> None:
  """Makes ``diffusers`` importable here; call before importing it.

  Silences the Flax classes' per-instance deprecation warnings, and stubs
  torchvision's op registrations, which fail with its CPU wheel and break
  diffusers' UNet import (docs/reference.md, "Library notes").
  """
  os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
  name = "torchvision._meta_registrations"
  if ("torchvision" not in sys.modules and name not in sys.modules
      and importlib.util.find_spec("torchvision") is not None):
    sys.modules[name] = types.ModuleType(name)


def _has_flax_weights(model_dir: str, subfolder: str) -> bool:
  return any(os.path.isfile(os.path.join(model_dir, subfolder, f))
             for f in _FLAX_WEIGHTS)


def resolve_model_dir(model: str, revision: str = "") -> str:
  """The local diffusers folder of ``model``: itself, or its hub snapshot at
  ``revision`` ("" = the default branch)."""
  if os.path.isdir(model):
    if revision:
      raise ValueError(
          f"generate.revision={revision!r} applies to hub ids, but {model!r} is a local "
          "folder; set --config.generate.revision= (empty) or pass a hub id.")
    return model
  if not hub.looks_like_repo_id(model):
    raise FileNotFoundError(
        f"generate.model={model!r} is neither a local diffusers folder nor a hub id "
        "(ORG/NAME, e.g. CompVis/stable-diffusion-v1-4).")
  ref = hub.hub_ref(model, revision)
  patterns = ["model_index.json"] + [f"{c}/*" for c in COMPONENTS]
  snapshot = hub.download_snapshot(ref, allow_patterns=patterns,
                                   ignore_patterns=_OTHER_WEIGHTS)
  missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(snapshot, c))]
  if missing:
    raise hub.not_found(ref, f"the components {missing}", "incomplete snapshot")
  without_flax = [c for c in ("text_encoder", "unet", "vae")
                  if not _has_flax_weights(snapshot, c)]
  if without_flax:  # e.g. the default branch of a PyTorch-only release
    snapshot = hub.download_snapshot(
        ref, allow_patterns=[f"{c}/{f}" for c in without_flax for f in _PT_WEIGHTS])
  return snapshot


def _scheduler_class(name: str):
  prepare_imports()
  from diffusers import FlaxDDIMScheduler, FlaxPNDMScheduler  # pylint: disable=import-outside-toplevel
  classes = {"pndm": FlaxPNDMScheduler, "ddim": FlaxDDIMScheduler}
  if name not in classes:
    raise ValueError(f"Unknown scheduler {name!r}; expected one of {SCHEDULERS}.")
  return classes[name]


def _cast_floats(tree, dtype):
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      tree)


def load_components(model_dir: str, scheduler: str = "pndm",
                    dtype: str = "float32", revision: str = "") -> tuple[dict, dict]:
  """``(modules, params)`` of a diffusers folder or hub id, keyed by component."""
  prepare_imports()
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel  # pylint: disable=import-outside-toplevel
  from transformers import CLIPTokenizer, FlaxCLIPTextModel  # pylint: disable=import-outside-toplevel
  if dtype not in DTYPES:
    raise ValueError(f"Unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}.")
  model_dir = resolve_model_dir(model_dir, revision)
  missing = [s for s in COMPONENTS if not os.path.isdir(os.path.join(model_dir, s))]
  if missing:
    raise FileNotFoundError(
        f"{model_dir!r} is not a diffusers Stable Diffusion folder: missing "
        f"subfolders {missing}. Pass --config.generate.model=<local folder or hub id>.")
  jdtype = DTYPES[dtype]

  def pretrained(cls, subfolder: str):
    return cls.from_pretrained(
        model_dir, subfolder=subfolder, dtype=jdtype,
        from_pt=not _has_flax_weights(model_dir, subfolder))

  tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
  text_encoder = pretrained(FlaxCLIPTextModel, "text_encoder")
  unet, unet_params = pretrained(FlaxUNet2DConditionModel, "unet")
  vae, vae_params = pretrained(FlaxAutoencoderKL, "vae")
  sched, sched_state = _scheduler_class(scheduler).from_pretrained(
      model_dir, subfolder="scheduler")
  modules = {"tokenizer": tokenizer, "text_encoder": text_encoder,
             "unet": unet, "vae": vae, "scheduler": sched}
  params = {"text_encoder": _cast_floats(text_encoder.params, jdtype),
            "unet": _cast_floats(unet_params, jdtype),
            "vae": _cast_floats(vae_params, jdtype),
            "scheduler": sched_state}
  return modules, params


def make_sample_fn(modules: dict, resolution: int, steps: int,
                   guidance_scale: float):
  """``sample(params, prompt_ids [B, L] int32, uncond_ids [1, L] int32,
  seeds [B] uint32) -> uint8 [B, resolution, resolution, 3]``.

  ``guidance_scale`` 1.0 disables guidance (one UNet pass per step, not two).
  """
  text_encoder, unet, vae = modules["text_encoder"], modules["unet"], modules["vae"]
  scheduler = modules["scheduler"]
  latent = latent_size(modules, resolution)
  channels = unet.config.in_channels
  guided = guidance_scale != 1.0

  def unet_eps(params, latents, t, context, uncond):
    if not guided:
      return unet.apply({"params": params["unet"]}, latents,
                        jnp.broadcast_to(t, latents.shape[:1]),
                        encoder_hidden_states=context).sample
    b = latents.shape[0]
    # Interleave (uncond, cond) per sample: [B, 2, ...] -> [2B, ...] keeps each
    # sample's pair on its own device, so the batch sharding needs no exchange
    # (concatenating [uncond; cond] along the sharded axis would).
    lat2 = jnp.repeat(latents, 2, axis=0)
    ctx2 = jnp.stack([jnp.broadcast_to(uncond, context.shape), context], axis=1)
    ctx2 = ctx2.reshape((2 * b,) + context.shape[1:])
    eps = unet.apply({"params": params["unet"]}, lat2,
                     jnp.broadcast_to(t, (2 * b,)),
                     encoder_hidden_states=ctx2).sample
    eps = eps.astype(jnp.float32).reshape((b, 2) + eps.shape[1:])
    return eps[:, 0] + guidance_scale * (eps[:, 1] - eps[:, 0])

  def sample(params, prompt_ids, uncond_ids, seeds):
    context = text_encoder(prompt_ids, params=params["text_encoder"])[0]
    uncond = text_encoder(uncond_ids, params=params["text_encoder"])[0]
    # Per-image noise from the image's own key: independent of the batch.
    latents = jax.vmap(lambda s: jax.random.normal(
        jax.random.key(s), (channels, latent, latent), jnp.float32))(seeds)
    state = scheduler.set_timesteps(params["scheduler"], steps, latents.shape)
    latents = latents * state.init_noise_sigma

    def body(i, carry):
      latents, state = carry
      t = jnp.asarray(state.timesteps, jnp.int32)[i]
      x = scheduler.scale_model_input(state, latents, t)
      eps = unet_eps(params, x.astype(context.dtype), t, context, uncond)
      latents, state = scheduler.step(state, eps.astype(jnp.float32), t,
                                      latents).to_tuple()
      return latents, state

    latents, _ = jax.lax.fori_loop(0, steps, body, (latents, state))
    latents = (latents / vae.config.scaling_factor).astype(context.dtype)
    images = vae.apply({"params": params["vae"]}, latents, method=vae.decode).sample
    images = (images.astype(jnp.float32) / 2 + 0.5).clip(0, 1).transpose(0, 2, 3, 1)
    return jnp.round(images * 255).astype(jnp.uint8)

  return sample


def latent_size(modules: dict, resolution: int) -> int:
  """Latent side for ``resolution``; raises if the networks cannot take it."""
  vae_factor = 2 ** (len(modules["vae"].config.block_out_channels) - 1)
  unet_factor = 2 ** (len(modules["unet"].config.block_out_channels) - 1)
  if resolution % (vae_factor * unet_factor):
    raise ValueError(
        f"resolution {resolution} must be a multiple of "
        f"{vae_factor * unet_factor} (VAE downsampling {vae_factor} x UNet "
        f"downsampling {unet_factor}).")
  return resolution // vae_factor


def model_fingerprint(model_dir: str) -> str:
  """A short hash of a diffusers folder's configs and weight-file sizes."""
  digest = hashlib.sha1()
  for dirpath, dirnames, filenames in sorted(os.walk(model_dir)):
    dirnames.sort()
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, model_dir)
      if name.endswith(".json"):
        with open(path, "rb") as f:
          digest.update(rel.encode() + f.read())
      else:  # weights: their size is enough to tell checkpoints apart cheaply
        digest.update(f"{rel}:{os.path.getsize(path)}".encode())
  return digest.hexdigest()[:16]


class StableDiffusionGenerator:
  """Flax Stable Diffusion over all devices; implements ``Generator``.

  The paper samples 50 steps (animals) or 25 (faces) at guidance 7.5;
  ``batch_size`` is images per device per sampling call.
  """

  def __init__(self, model_dir: str, *, resolution: int = 512, steps: int = 50,
               guidance_scale: float = 7.5, scheduler: str = "pndm",
               dtype: str = "float32", batch_size: int = 8,
               name: str | None = None, revision: str = ""):
    local_dir = resolve_model_dir(model_dir, revision)
    modules, params = load_components(local_dir, scheduler, dtype)
    self._setup(modules, params, resolution=resolution, steps=steps,
                guidance_scale=guidance_scale, scheduler=scheduler, dtype=dtype,
                batch_size=batch_size,
                name=name or "sd:" + os.path.basename(os.path.normpath(model_dir)))
    # Recorded in generation.json and checked on resume, so a folder is never
    # continued with another model that happens to share a folder name.
    self.settings["model"] = model_fingerprint(local_dir)

  @classmethod
  def from_components(cls, modules: dict, params: dict, *, name: str = "sd",
                      **kwargs) -> StableDiffusionGenerator:
    """A generator from modules and params in memory (benchmarks with random weights)."""
    self = cls.__new__(cls)
    self._setup(modules, params, name=name, **kwargs)
    return self

  def _setup(self, modules: dict, params: dict, *, resolution: int = 512,
             steps: int = 50, guidance_scale: float = 7.5,
             scheduler: str = "pndm", dtype: str = "float32",
             batch_size: int = 8, name: str = "sd") -> None:
    if steps < 1 or batch_size < 1:
      raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}.")
    self._tokenizer = modules["tokenizer"]
    self.image_size = int(resolution)
    latent_size(modules, self.image_size)
    self.name = name
    self.settings = {"resolution": int(resolution), "steps": int(steps),
                     "guidance_scale": float(guidance_scale),
                     "scheduler": scheduler, "dtype": dtype}
    shardings = mesh_lib.make_shardings()
    self.global_batch = batch_size * shardings.num_devices
    self._replicated, self._batch = shardings.replicated, shardings.batch
    self._params = jax.device_put(params, self._replicated)
    self._uncond = self._global(self._tokenize([""]), self._replicated)
    self._sample = jax.jit(
        make_sample_fn(modules, self.image_size, steps, guidance_scale),
        in_shardings=(self._replicated, self._batch, self._replicated, self._batch),
        out_shardings=self._batch)

  def _tokenize(self, prompts: Sequence[str]) -> np.ndarray:
    return self._tokenizer(
        list(prompts), padding="max_length", truncation=True,
        max_length=self._tokenizer.model_max_length, return_tensors="np",
    ).input_ids.astype(np.int32)

  @staticmethod
  def _global(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    # Every host holds the whole (small) host array; each device takes its slice.
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
    """uint8 ``[N, S, S, 3]``; on several hosts every host calls it with the
    same arguments and gets all N images."""
    if len(prompts) != len(seeds):
      raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds.")
    out = []
    for start in range(0, len(prompts), self.global_batch):
      p = list(prompts[start:start + self.global_batch])
      s = list(seeds[start:start + self.global_batch])
      n = len(p)
      # Pad to the one compiled batch; padded rows are computed and dropped.
      p += [p[-1]] * (self.global_batch - n)
      s += [s[-1]] * (self.global_batch - n)
      ids = self._global(self._tokenize(p), self._batch)
      seed_arr = self._global(np.asarray(s, np.uint32), self._batch)
      images = self._sample(self._params, ids, self._uncond, seed_arr)
      out.append(_to_host(images)[:n])
    if not out:
      return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
    return np.concatenate(out)


def _to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
