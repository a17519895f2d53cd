"""Flax ResNets with torchvision's architecture and parameter names, so its
ImageNet checkpoints load one-to-one (:mod:`ffr_jax.models.weights`).

Under ``jax.jit`` with the batch sharded over a mesh, BatchNorm's means are
global reductions: statistics over the global batch with no ``axis_name``.
Unlike torch, flax updates the running variance with the biased batch
variance (below 0.02% apart for batch 128 at 224 px). Kernels are HWIO, the
head kernel is (in, out).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# torchvision initialises convolutions with kaiming_normal(mode="fan_out").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weight.
_fc_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _fc_bias_init(fan_in: int) -> Callable[..., jax.Array]:
  """torch.nn.Linear's bias init."""
  bound = 1.0 / np.sqrt(fan_in)
  return functools.partial(jax.random.uniform, minval=-bound, maxval=bound)


@flax.struct.dataclass
class ResNetOutput:
  """Float32 ``logits`` and the pooled ``embedding`` before the head (2048-d
  for ResNet50); a pytree."""

  logits: jax.Array
  embedding: jax.Array


class Conv1x1Matmul(nn.Module):
  """A bias-free 1x1 convolution as reshape + matmul, with nn.Conv's kernel.

  XLA:CPU's convolution backward pass is about 5x slower than the same matmul
  (docs/reference.md, "Library notes"); 1x1 convolutions hold most of
  ResNet50's FLOPs.
  """

  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
        "kernel", _conv_init, (1, 1, x.shape[-1], self.features), jnp.float32)
    if self.strides != 1:
      x = x[:, ::self.strides, ::self.strides, :]
    x = x.astype(self.dtype)
    kernel = kernel.reshape(kernel.shape[2:]).astype(self.dtype)
    return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


# At or below this many output pixels, and from 256 input channels, XLA:CPU's
# convolution ran up to 40x slower than a patches matmul; from 4x4 outputs or
# at 64-128 channels the native one is as fast (docs/performance.md).
SMALL_OUTPUT_PIXELS = 4
SMALL_CONV_MIN_CHANNELS = 256


class ConvSmallAsMatmul(nn.Module):
  """A bias-free k x k convolution (nn.Conv's kernel) that is a patches matmul
  on outputs of at most :data:`SMALL_OUTPUT_PIXELS` pixels from at least
  :data:`SMALL_CONV_MIN_CHANNELS` channels."""

  features: int
  kernel_size: int
  strides: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, s, pad = self.kernel_size, self.strides, self.kernel_size // 2
    kernel = self.param("kernel", _conv_init, (k, k, x.shape[-1], self.features),
                        jnp.float32).astype(self.dtype)
    x = x.astype(self.dtype)
    out_h = (x.shape[1] + 2 * pad - k) // s + 1
    out_w = (x.shape[2] + 2 * pad - k) // s + 1
    if (out_h * out_w > SMALL_OUTPUT_PIXELS
        or x.shape[-1] < SMALL_CONV_MIN_CHANNELS):
      return _conv_plain(x, kernel, s)
    patches = jax.lax.conv_general_dilated_patches(
        x, (k, k), (s, s), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # Patch features are ordered (in, kh, kw); the kernel is (kh, kw, in, out).
    weights = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, self.features)
    return jax.lax.dot_general(patches, weights,
                               (((patches.ndim - 1,), (0,)), ((), ())))


def _conv_plain(x: jax.Array, kernel: jax.Array, strides: int) -> jax.Array:
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (strides, strides), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv(features: int, kernel: int, strides: int, dtype: Dtype, name: str,
          conv1x1_as_matmul: bool = False, small_convs_as_matmul: bool = False
          ) -> nn.Module:
  if kernel == 1 and conv1x1_as_matmul:
    return Conv1x1Matmul(features, strides=strides, dtype=dtype, name=name)
  if kernel > 1 and small_convs_as_matmul:
    return ConvSmallAsMatmul(features, kernel, strides, dtype=dtype, name=name)
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 param_dtype=jnp.float32, kernel_init=_conv_init, name=name)


def _batch_norm(train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
  """BatchNorm with torch's defaults (torch momentum 0.1 == flax momentum 0.9)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, param_dtype=jnp.float32, name=name)


class _Block(nn.Module):
  """What torchvision's residual blocks share: fields, convolutions and the
  shortcut."""

  planes: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  conv1x1_as_matmul: bool = False
  small_convs_as_matmul: bool = False
  expansion = 1

  def conv(self, features: int, kernel: int, strides: int, name: str
           ) -> nn.Module:
    return _conv(features, kernel, strides, self.dtype, name,
                 self.conv1x1_as_matmul, self.small_convs_as_matmul)

  def shortcut(self, x: jax.Array, train: bool) -> jax.Array:
    """Identity, or torchvision's ``downsample`` (1x1 conv + BN) on a shape change."""
    out_features = self.planes * self.expansion
    if self.strides == 1 and x.shape[-1] == out_features:
      return x
    x = self.conv(out_features, 1, self.strides, "downsample_conv")(x)
    return _batch_norm(train, self.dtype, "downsample_bn")(x)


class BasicBlock(_Block):
  """torchvision's BasicBlock: two 3x3 convolutions (ResNet18/34)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.planes, 3, self.strides, "conv1")(x)
    y = nn.relu(_batch_norm(train, self.dtype, "bn1")(y))
    y = self.conv(self.planes, 3, 1, "conv2")(y)
    y = _batch_norm(train, self.dtype, "bn2")(y)
    return nn.relu(y + self.shortcut(x, train))


class Bottleneck(_Block):
  """torchvision's Bottleneck (v1.5: the stride is on the 3x3 convolution)."""

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.planes, 1, 1, "conv1")(x)
    y = nn.relu(_batch_norm(train, self.dtype, "bn1")(y))
    y = self.conv(self.planes, 3, self.strides, "conv2")(y)
    y = nn.relu(_batch_norm(train, self.dtype, "bn2")(y))
    y = self.conv(self.planes * self.expansion, 1, 1, "conv3")(y)
    y = _batch_norm(train, self.dtype, "bn3")(y)
    return nn.relu(y + self.shortcut(x, train))


BLOCKS: dict[str, type[_Block]] = {"basic": BasicBlock, "bottleneck": Bottleneck}

# The ResNet fields a run's config.model sets (ffr_jax.models.MODELS): they
# change how convolutions are computed, never the parameters or outputs.
RESNET_OPTIONS = ("conv1x1_as_matmul", "small_convs_as_matmul")


def stage_widths(width: float) -> tuple[int, tuple[int, int, int, int]]:
  """Stem channels and per-stage planes (torchvision's 64; 64..512) times ``width``."""
  def scale(c: int) -> int:
    return max(1, int(round(c * width)))

  return scale(64), tuple(scale(64 * 2**i) for i in range(4))


class ResNet(nn.Module):
  """A torchvision-architecture ResNet.

  ``dtype`` is the compute dtype; parameters, BatchNorm statistics and outputs
  stay float32. The ``*_matmul`` flags change how convolutions are computed
  on CPU, never parameters or outputs.
  """

  stage_sizes: Sequence[int]
  block: str = "bottleneck"
  num_classes: int = 1000
  width: float = 1.0
  dtype: Dtype = jnp.float32
  conv1x1_as_matmul: bool = False
  small_convs_as_matmul: bool = False

  @property
  def embedding_dim(self) -> int:
    return stage_widths(self.width)[1][3] * BLOCKS[self.block].expansion

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> ResNetOutput:
    """``x``: normalised NHWC images; ``train`` needs ``mutable=["batch_stats"]``."""
    if self.block not in BLOCKS:
      raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {self.block!r}")
    block_cls = BLOCKS[self.block]
    stem, planes = stage_widths(self.width)
    x = _conv(stem, 7, 2, self.dtype, "conv1")(x.astype(self.dtype))
    x = nn.relu(_batch_norm(train, self.dtype, "bn1")(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (num_blocks, stage_planes) in enumerate(zip(self.stage_sizes, planes)):
      for i in range(num_blocks):
        strides = 2 if stage > 0 and i == 0 else 1
        x = block_cls(stage_planes, strides=strides, dtype=self.dtype,
                      conv1x1_as_matmul=self.conv1x1_as_matmul,
                      small_convs_as_matmul=self.small_convs_as_matmul,
                      name=f"layer{stage + 1}_{i}")(x, train)
    # Pool in float32: a mean over 49+ bf16 values loses precision otherwise.
    embedding = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    # The head runs in float32 whatever the compute dtype: it costs nothing and
    # keeps the logits (and the loss) at full precision.
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      kernel_init=_fc_kernel_init,
                      bias_init=_fc_bias_init(embedding.shape[-1]), name="fc")(embedding)
    return ResNetOutput(logits=logits, embedding=embedding)
