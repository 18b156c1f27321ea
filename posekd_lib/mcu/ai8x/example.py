"""The golden test network `AI85PoseLike` (every kind of ai8x layer in 25k parameters)."""
from __future__ import annotations

from torch import nn

from .layers import (Add, Conv2d, FusedAvgPoolConv2dReLU, FusedConv2dBNReLU, FusedConv2dReLU,
                     FusedMaxPoolConv2dBNReLU)


class AI85PoseLike(nn.Module):
    """A 25k-parameter pose-like MAX78000 network (3x64x64 -> 17x16x16): BN and non-BN layers,
    max and average pooling, a 1x1 conv, a residual add and a wide (32-bit) 1x1 head.
    ``layer_kwargs`` (e.g. ``weight_bits=8, quantize_activation=True``) go to every layer."""

    def __init__(self, num_keypoints: int = 17, **layer_kwargs):
        super().__init__()
        kw = dict(bias=True, **layer_kwargs)
        self.conv1 = FusedConv2dBNReLU(3, 16, kernel_size=3, padding=1, **kw)
        self.conv2 = FusedMaxPoolConv2dBNReLU(16, 32, kernel_size=3, pool_size=2, pool_stride=2,
                                              padding=1, **kw)
        self.conv3 = FusedConv2dReLU(32, 32, kernel_size=3, padding=1, **kw)
        self.conv4 = FusedConv2dBNReLU(32, 32, kernel_size=1, padding=0, **kw)
        self.add = Add(device=layer_kwargs.get("device"))
        self.conv5 = FusedAvgPoolConv2dReLU(32, 32, kernel_size=3, pool_size=2, pool_stride=2,
                                            padding=1, **kw)
        self.head = Conv2d(32, num_keypoints, kernel_size=1, padding=0, wide=True, **kw)

    def forward(self, x):
        r = self.conv2(self.conv1(x))
        y = self.conv4(self.conv3(r))
        return self.head(self.conv5(self.add(r, y)))


def ai85poselike(**layer_kwargs) -> AI85PoseLike:
    return AI85PoseLike(**layer_kwargs)
