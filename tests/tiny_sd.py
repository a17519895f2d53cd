"""A tiny, randomly initialised Stable Diffusion in diffusers layout, built offline.

Checked on this project's machines (docs/reference.md, "Library notes"): a
hand-written CLIP BPE vocabulary with whole-word tokens for the
words the tests use (other lower-case words still tokenize letter by letter),
a 2-layer CLIP text encoder, a 3-block VAE (4x downsampling) and a 2-block
UNet; about 1.8M parameters. ``build(dir)`` writes it with ``save_pretrained``
so that it loads exactly like a real checkpoint.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Iterable

WORDS = ("a", "photo", "of", "indoors", "outdoors", "land", "water", "small",
         "big", "dog", "landbird", "waterbird", "cat", "in", "the", "kitchen")
MAX_LENGTH = 16
# What FlaxStableDiffusionPipeline.save_pretrained writes, minus the safety checker.
MODEL_INDEX = {
    "_class_name": "FlaxStableDiffusionPipeline",
    "_diffusers_version": "0.39.0",
    "feature_extractor": [None, None],
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "FlaxPNDMScheduler"],
    "text_encoder": ["transformers", "FlaxCLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "FlaxUNet2DConditionModel"],
    "vae": ["diffusers", "FlaxAutoencoderKL"],
}


def write_tokenizer(out_dir: str, words: Iterable[str] = WORDS) -> dict[str, int]:
  """Writes ``vocab.json`` + ``merges.txt`` for a CLIP BPE tokenizer; returns the vocab."""
  vocab: list[str] = list(string.ascii_lowercase)
  vocab += [c + "</w>" for c in string.ascii_lowercase]
  merges: list[str] = []
  for word in sorted(set(words)):
    # Left-to-right merges: "p h" -> "ph", "ph o" -> "pho", ... "phot o</w>".
    token = word[0]
    for i, ch in enumerate(word[1:], 1):
      right = ch + ("</w>" if i == len(word) - 1 else "")
      merge = f"{token} {right}"
      token = token + right
      if merge not in merges:
        merges.append(merge)
      if token not in vocab:
        vocab.append(token)
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  ids = {tok: i for i, tok in enumerate(vocab)}
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "vocab.json"), "w") as f:
    json.dump(ids, f)
  with open(os.path.join(out_dir, "merges.txt"), "w") as f:
    f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
  return ids


def build(out_dir: str, seed: int = 0) -> str:
  """Builds the tiny pipeline into ``out_dir`` (diffusers layout); returns it."""
  from ffr_jax.generation.stable_diffusion import prepare_imports  # pylint: disable=import-outside-toplevel
  prepare_imports()
  import jax  # pylint: disable=import-outside-toplevel
  from diffusers import (  # pylint: disable=import-outside-toplevel
      FlaxAutoencoderKL, FlaxPNDMScheduler, FlaxUNet2DConditionModel)
  from transformers import (  # pylint: disable=import-outside-toplevel
      CLIPTextConfig, CLIPTokenizer, FlaxCLIPTextModel)

  tok_dir = os.path.join(out_dir, "tokenizer")  # save_pretrained rewrites it
  ids = write_tokenizer(tok_dir)
  tokenizer = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"),
                            os.path.join(tok_dir, "merges.txt"),
                            model_max_length=MAX_LENGTH)
  text_config = CLIPTextConfig(
      vocab_size=len(ids), hidden_size=32, intermediate_size=64,
      num_hidden_layers=2, num_attention_heads=4,
      max_position_embeddings=MAX_LENGTH, projection_dim=32,
      bos_token_id=ids["<|startoftext|>"], eos_token_id=ids["<|endoftext|>"],
      pad_token_id=ids["<|endoftext|>"])
  text_encoder = FlaxCLIPTextModel(text_config, seed=seed)
  vae = FlaxAutoencoderKL(
      in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
      up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 64),
      layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=64)
  unet = FlaxUNet2DConditionModel(
      sample_size=16, in_channels=4, out_channels=4,
      down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
      block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=8,
      cross_attention_dim=32)
  scheduler = FlaxPNDMScheduler(
      beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
      num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False,
      steps_offset=1)
  k_vae, k_unet = jax.random.split(jax.random.key(seed))
  params = {
      "text_encoder": text_encoder.params,
      "vae": jax.jit(vae.init_weights)(k_vae),
      "unet": jax.jit(unet.init_weights)(k_unet),
      "scheduler": scheduler.create_state(),
  }
  # Saved component by component (what the pipeline's save_pretrained does)
  # so that building needs no pipeline class and its image-processor imports.
  tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))
  text_encoder.save_pretrained(os.path.join(out_dir, "text_encoder"),
                               params=params["text_encoder"])
  vae.save_pretrained(os.path.join(out_dir, "vae"), params=params["vae"])
  unet.save_pretrained(os.path.join(out_dir, "unet"), params=params["unet"])
  scheduler.save_pretrained(os.path.join(out_dir, "scheduler"))
  with open(os.path.join(out_dir, "model_index.json"), "w") as f:
    json.dump(MODEL_INDEX, f, indent=2)
  return out_dir


if __name__ == "__main__":
  import sys
  print(build(sys.argv[1]))
