"""Images/s of our sharded Stable Diffusion sampler, beside diffusers' PyTorch pipeline.

Both sides use the Stable Diffusion v1.4 architecture (configs below, copied
from the release's ``unet/``, ``vae/``, ``text_encoder/`` and ``scheduler/``
config files) with random weights, so nothing is downloaded: timing does not
depend on the weights' values. Prompts go through a small hand-written CLIP
BPE vocabulary (the real 49408-token vocabulary is not available offline);
token ids are padded to 77 as in SD, so the text encoder does the same work.
Each side does text encoding, classifier-free guidance (two UNet passes per
step as one batch), the scheduler steps and the VAE decode.

  python benchmarks/generate.py                     # 64 px, 3 steps, CPU-sized
  python benchmarks/generate.py --resolution 512 --steps 50 --dtype bfloat16 \\
      --batch-size 8 --no-torch                     # a GPU/TPU run

Appends one record to ``benchmarks/results/generate.json``.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "generate.json")
sys.path.insert(0, ROOT)

# Stable Diffusion v1.4's architecture (CompVis/stable-diffusion-v1-4 configs).
SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    attention_head_dim=8, cross_attention_dim=768)
SD14_VAE = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=4, norm_num_groups=32, sample_size=512)
SD14_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072,
    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
    hidden_act="quick_gelu", projection_dim=768)
SD14_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False,
    steps_offset=1)
# --tiny: the same component classes at toy sizes, for a CPU smoke run of the
# script (tests/test_benchmarks_smoke.py); its numbers mean nothing.
TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64), layers_per_block=1,
    attention_head_dim=8, cross_attention_dim=32)
TINY_VAE = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(32, 32), layers_per_block=1,
    latent_channels=4, norm_num_groups=32, sample_size=16)
TINY_TEXT = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=64,
    num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
    hidden_act="quick_gelu", projection_dim=32)
PROMPTS = ("A photo of indoors small dog", "a photo of a cat in the kitchen",
           "A photo of water landbird", "A photo of land waterbird")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--resolution", type=int, default=64)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--batch-size", type=int, default=1, help="images per device per call")
  p.add_argument("--calls", type=int, default=2, help="timed sampling calls")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--scheduler", default="pndm", choices=("pndm", "ddim"))
  p.add_argument("--guidance-scale", type=float, default=7.5)
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
  p.add_argument("--torch-threads", type=int, default=0, help="0: torch's default")
  p.add_argument("--torch-dtype", default="same",
                 choices=("same", "float32", "float16", "bfloat16"),
                 help="dtype of the PyTorch pipeline (same: --dtype); float16 is "
                 "diffusers' usual GPU setting")
  p.add_argument("--tiny", action="store_true",
                 help="toy-sized components (a smoke run of the script, not a benchmark)")
  p.add_argument("--label", default="")
  p.add_argument("--out", default=RESULTS)
  return p.parse_args(argv)


def architecture(tiny: bool) -> tuple[dict, dict, dict]:
  """(unet, vae, text encoder) configs: SD v1.4's or the toy ones."""
  if tiny:
    return TINY_UNET, TINY_VAE, TINY_TEXT
  return SD14_UNET, SD14_VAE, SD14_TEXT


def _tokenizer(max_length: int = 77):
  from transformers import CLIPTokenizer  # pylint: disable=import-outside-toplevel
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import tiny_sd  # pylint: disable=import-outside-toplevel
  words = {w for p in PROMPTS for w in p.lower().split()}
  d = tempfile.mkdtemp(prefix="sd14_tok_")
  tiny_sd.write_tokenizer(d, words)
  return CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"),
                       model_max_length=max_length)


def _random_params(shapes, seed: int):
  """Random weights of the given shapes, without compiling any init function.

  Kernels ~ N(0, 1/fan_in), biases 0, norm scales 1: activations stay bounded,
  which is all a timing needs (and XLA's init functions for the full UNet take
  minutes to compile on a small CPU).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(path[-1])
    if "bias" in name:
      return np.zeros(leaf.shape, leaf.dtype)
    if "scale" in name:
      return np.ones(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    return (rng.standard_normal(leaf.shape, np.float32) / np.sqrt(fan_in)).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


def jax_components(dtype: str, scheduler: str, tiny: bool = False):
  """SD v1.4 modules and random params, in :func:`load_components`'s format."""
  from ffr_jax.generation import stable_diffusion as sd  # pylint: disable=import-outside-toplevel
  sd.prepare_imports()
  import jax  # pylint: disable=import-outside-toplevel
  from diffusers import FlaxAutoencoderKL, FlaxUNet2DConditionModel  # pylint: disable=import-outside-toplevel
  from transformers import CLIPTextConfig, FlaxCLIPTextModel  # pylint: disable=import-outside-toplevel
  jdtype = sd.DTYPES[dtype]
  key = jax.random.key(0)
  unet_cfg, vae_cfg, text_cfg = architecture(tiny)
  text = FlaxCLIPTextModel(CLIPTextConfig(**text_cfg), _do_init=False, dtype=jdtype)
  unet = FlaxUNet2DConditionModel(**unet_cfg, dtype=jdtype)
  vae = FlaxAutoencoderKL(**vae_cfg, dtype=jdtype)
  sched_cls = sd._scheduler_class(scheduler)  # pylint: disable=protected-access
  sched = sched_cls(**{k: v for k, v in SD14_SCHEDULER.items()
                       if k in inspect.signature(sched_cls.__init__).parameters})
  params = {
      "text_encoder": _random_params(
          jax.eval_shape(lambda k: text.init_weights(k, (1, 77)), key), 1),
      "unet": _random_params(jax.eval_shape(unet.init_weights, key), 2),
      "vae": _random_params(jax.eval_shape(vae.init_weights, key), 3),
      "scheduler": sched.create_state(),
  }
  params = {k: sd._cast_floats(v, jdtype) if k != "scheduler" else v  # pylint: disable=protected-access
            for k, v in params.items()}
  modules = {"tokenizer": _tokenizer(), "text_encoder": text, "unet": unet,
             "vae": vae, "scheduler": sched}
  return modules, params


def _count(tree) -> int:
  import jax  # pylint: disable=import-outside-toplevel
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def bench_jax(args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from ffr_jax.generation.stable_diffusion import StableDiffusionGenerator  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  modules, params = jax_components(args.dtype, args.scheduler, args.tiny)
  counts = {k: _count(v) for k, v in params.items() if k != "scheduler"}
  gen = StableDiffusionGenerator.from_components(
      modules, params, name="sd14-random", resolution=args.resolution,
      steps=args.steps, guidance_scale=args.guidance_scale,
      scheduler=args.scheduler, dtype=args.dtype, batch_size=args.batch_size)
  build_s = time.perf_counter() - t0
  n = gen.global_batch
  prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
  t0 = time.perf_counter()
  gen.generate(prompts, list(range(n)))  # compiles
  first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for c in range(args.calls):
    gen.generate(prompts, list(range(n * (c + 1), n * (c + 2))))
  timed = time.perf_counter() - t0
  ips = n * args.calls / timed
  return {"impl": "ffr_jax (jit, NamedSharding)", "device": str(jax.devices()[0].platform),
          "num_devices": jax.device_count(), "global_batch": n,
          "params": counts, "build_s": round(build_s, 1),
          "first_call_s": round(first_s, 1), "seconds_per_call": round(timed / args.calls, 2),
          "images_per_s": round(ips, 4),
          "images_per_s_per_device": round(ips / jax.device_count(), 4)}


def bench_torch(args, n: int) -> dict:
  from ffr_jax.generation.stable_diffusion import prepare_imports  # pylint: disable=import-outside-toplevel
  prepare_imports()
  import torch  # pylint: disable=import-outside-toplevel
  from diffusers import (AutoencoderKL, DDIMScheduler, PNDMScheduler,  # pylint: disable=import-outside-toplevel
                         StableDiffusionPipeline, UNet2DConditionModel)
  from transformers import CLIPTextConfig, CLIPTextModel  # pylint: disable=import-outside-toplevel
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  tdtype = getattr(torch, args.dtype if args.torch_dtype == "same" else args.torch_dtype)
  unet_cfg, vae_cfg, text_cfg = architecture(args.tiny)
  t0 = time.perf_counter()
  sched_cls = PNDMScheduler if args.scheduler == "pndm" else DDIMScheduler
  sched = sched_cls(**{k: v for k, v in SD14_SCHEDULER.items()
                       if k in inspect.signature(sched_cls.__init__).parameters})
  pipe = StableDiffusionPipeline(
      vae=AutoencoderKL(**vae_cfg), text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
      tokenizer=_tokenizer(), unet=UNet2DConditionModel(**unet_cfg), scheduler=sched,
      safety_checker=None, feature_extractor=None, requires_safety_checker=False)
  pipe = pipe.to(dev, tdtype)
  # torch 2's fused scaled-dot-product attention (diffusers' default; explicit
  # so the record says what ran).
  from diffusers.models.attention_processor import AttnProcessor2_0  # pylint: disable=import-outside-toplevel
  pipe.unet.set_attn_processor(AttnProcessor2_0())
  pipe.vae.set_attn_processor(AttnProcessor2_0())
  pipe.set_progress_bar_config(disable=True)
  build_s = time.perf_counter() - t0
  prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]

  def call(seed):
    g = torch.Generator(dev).manual_seed(seed)
    return pipe(prompts, height=args.resolution, width=args.resolution,
                num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                generator=g, output_type="np").images

  with torch.inference_mode():
    t0 = time.perf_counter()
    call(0)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in range(args.calls):
      call(c + 1)
    timed = time.perf_counter() - t0
  ips = n * args.calls / timed
  return {"impl": f"diffusers StableDiffusionPipeline (torch {torch.__version__}, "
                  f"{str(tdtype).removeprefix('torch.')}, SDPA)",
          "device": dev, "num_devices": 1, "global_batch": n,
          "threads": torch.get_num_threads(), "build_s": round(build_s, 1),
          "first_call_s": round(first_s, 1), "seconds_per_call": round(timed / args.calls, 2),
          "images_per_s": round(ips, 4), "images_per_s_per_device": round(ips, 4)}


def main(argv=None) -> dict:
  """Runs the benchmark; appends its record to ``--out`` and returns it."""
  args = parse_args(argv)
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  rows = [bench_jax(args)]
  print(json.dumps(rows[-1]), file=sys.stderr)
  if not args.no_torch:
    try:
      rows.append(bench_torch(args, rows[0]["global_batch"]))
      print(json.dumps(rows[-1]), file=sys.stderr)
    except ImportError as e:
      print(f"torch baseline skipped: {e}", file=sys.stderr)
  settings = {k: getattr(args, k) for k in (
      "resolution", "steps", "batch_size", "calls", "dtype", "torch_dtype", "scheduler",
      "guidance_scale", "tiny")}
  arch = "toy components (--tiny)" if args.tiny else "SD v1.4 architecture"
  print(f"\n{arch}, random weights, {settings}")
  print(f"{'implementation':<58}{'devices':>8}{'batch':>6}{'first call s':>13}"
        f"{'s/call':>8}{'img/s':>9}{'img/s/dev':>10}")
  for r in rows:
    print(f"{r['impl']:<58}{r['num_devices']:>8}{r['global_batch']:>6}"
          f"{r['first_call_s']:>13}{r['seconds_per_call']:>8}{r['images_per_s']:>9}"
          f"{r['images_per_s_per_device']:>10}")
  record = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
            "label": args.label, "host": platform.node(), "settings": settings,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "results": rows}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  old = []
  if os.path.isfile(args.out):
    with open(args.out) as f:
      old = json.load(f)
  with open(args.out, "w") as f:
    json.dump(old + [record], f, indent=2)
  return record


if __name__ == "__main__":
  main()
