"""Writes the torchvision parity fixtures used by tests/test_models.py.

Needs torch + torchvision (never needed by the tests themselves):

  pip install torch==2.13.0 && pip install --no-deps torchvision==0.28.0
  python tests/make_torchvision_fixture.py

For each of a Bottleneck ResNet50 ([3, 4, 6, 3]) and a BasicBlock ResNet18
([2, 2, 2, 2]) at 1/16 of torchvision's width, it builds the network with
torchvision's own ``ResNet._make_layer`` / ``forward`` and block classes,
randomises the weights and the BatchNorm running statistics, runs it in eval
mode on a fixed input and saves:

  tests/fixtures/{name}.safetensors   the state dict (torchvision names)
  tests/fixtures/{name}.npz           input (NCHW and NHWC), logits, embedding

torchvision's ``ResNet.__init__`` hard-codes 64..512 channels, so
:class:`ScaledResNet` repeats its few constructor lines with scaled widths and
inherits everything else; the architecture is torchvision's.
"""

from __future__ import annotations

import os
import sys
import types

import numpy as np

# torchvision's compiled ops are a CUDA build on this machine and fail to load;
# the models themselves do not need them (docs/reference.md, "Library notes").
sys.modules.setdefault("torchvision._meta_registrations",
                       types.ModuleType("torchvision._meta_registrations"))

import torch  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models import resnet as tv  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
WIDTH = 1 / 16
NUM_CLASSES = 10
IMAGE_SIZE = 64


class ScaledResNet(tv.ResNet):
  """torchvision's ResNet with every channel count multiplied by ``width``."""

  def __init__(self, block: type[nn.Module], layers: list[int], width: float,
               num_classes: int) -> None:
    nn.Module.__init__(self)
    scale = lambda c: max(1, int(round(c * width)))  # noqa: E731  (same rule as ours)
    self._norm_layer = nn.BatchNorm2d
    self.inplanes = scale(64)
    self.dilation = 1
    self.groups = 1
    self.base_width = 64
    self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(self.inplanes)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, scale(64), layers[0])
    self.layer2 = self._make_layer(block, scale(128), layers[1], stride=2)
    self.layer3 = self._make_layer(block, scale(256), layers[2], stride=2)
    self.layer4 = self._make_layer(block, scale(512), layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(scale(512) * block.expansion, num_classes)


def _randomise(model: nn.Module, gen: torch.Generator) -> None:
  """Non-trivial BatchNorm statistics and affine terms, so the test sees them."""
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      c = m.num_features
      m.weight.data = 0.5 + torch.rand(c, generator=gen)
      m.bias.data = 0.2 * torch.randn(c, generator=gen)
      m.running_mean.data = 0.2 * torch.randn(c, generator=gen)
      m.running_var.data = 0.5 + torch.rand(c, generator=gen)


def make(name: str, block: type[nn.Module], layers: list[int], seed: int) -> None:
  """Builds, runs and saves one fixture."""
  torch.manual_seed(seed)
  gen = torch.Generator().manual_seed(seed)
  model = ScaledResNet(block, layers, WIDTH, NUM_CLASSES)
  _randomise(model, gen)
  model.eval()
  x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
  with torch.no_grad():
    feats = model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(
        model.maxpool(model.relu(model.bn1(model.conv1(x)))))))))
    embedding = torch.flatten(feats, 1)
    logits = model(x)
  state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  os.makedirs(FIXTURES, exist_ok=True)
  save_file(state, os.path.join(FIXTURES, f"{name}.safetensors"))
  np.savez_compressed(
      os.path.join(FIXTURES, f"{name}.npz"),
      x_nhwc=x.numpy().transpose(0, 2, 3, 1), logits=logits.numpy(),
      embedding=embedding.numpy())
  params = sum(v.numel() for v in model.parameters())
  print(f"{name}: {params} parameters, logits {tuple(logits.shape)}, "
        f"embedding {tuple(embedding.shape)}")


def main() -> None:
  make("resnet50_w16", tv.Bottleneck, [3, 4, 6, 3], seed=0)
  make("resnet18_w16", tv.BasicBlock, [2, 2, 2, 2], seed=1)


if __name__ == "__main__":
  main()
