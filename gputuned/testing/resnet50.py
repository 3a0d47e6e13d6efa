"""torchvision's ResNet-50 with random weights (nothing downloaded), for the GPU check:
served as `gputuned.testing.resnet50:build` with input shape 3,224,224.

Random weights compute exactly as trained ones do, which is all a serving benchmark
measures. Needs torchvision (on GPU hosts it comes with the CUDA build of torch; it is not
one of gputuned's dependencies)."""

from __future__ import annotations

import torch
from torch import nn


def build() -> nn.Module:
    from torchvision.models import resnet50

    torch.manual_seed(0)
    return resnet50(weights=None)
