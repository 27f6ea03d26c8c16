"""DiskShapeNet: a ResNet-18-like encoder with a point-regression head and a U-Net decoder.

Shapes (S = spatial_size, N = num_points, w = width, k = len(blocks)):

    input  x          (B, in_channels, S, S), intensities in [0, 1]
    stem              (B, w, S, S)                       3x3 conv + GroupNorm + LeakyReLU
    encoder stage i   (B, w * 2**i, S / 2**(i+1), ...)   blocks[i] residual BasicBlocks, the first with stride 2
    point head        (B, N, 2)   (x, y) patch pixels = mean_shape + MLP(pooled last stage)
    seg decoder       (B, 1, S, S) logits                transposed conv + skip concat + 2 convs per stage

The output is a dict {"pred": (B, N, 2), "seg": (B, 1, S, S)}; a head that is switched off is absent
(docs/architecture.md, "Network output"). With `export=True` the same weights give one tensor instead,
the points channel-first (B, 2, N) as MONAI's bundle metadata describes them ("num_channels": 2,
"spatial_shape": [N]): what `monai.bundle verify_net_in_out` and `ckpt_export` (TorchScript) take.
The forward pass is TorchScript-compatible either way.

Only GroupNorm is used (no BatchNorm): the attacks need a network whose forward pass does not change
its state, and adversarial training concatenates clean and adversarial samples in one batch, whose
batch statistics would mix the two.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["DiskShapeNet", "ellipse_mean_shape"]

# Semi-axes of the default mean shape as fractions of the patch size: a lumbar disk is about 31 mm
# long (antero-posterior) and 12 mm high, i.e. 62 x 24 px in a 128 px patch at 0.5 mm/px.
_ELLIPSE_HALF_WIDTH = 0.24
_ELLIPSE_HALF_HEIGHT = 0.09

# Hidden units of the point head's MLP and the spatial grid its input is pooled to.
_POINT_HIDDEN = 256
_POINT_POOL = 4


def ellipse_mean_shape(num_points: int = 176, spatial_size: int = 128) -> torch.Tensor:
    """A disk-like ellipse in the contract's point order, (num_points, 2) (x, y) patch pixels.

    Point 0 is the anterior-superior "corner" (upper left, at -45 degrees), the first quarter runs
    down the anterior (left) side, the second along the inferior endplate, the third up the posterior
    side, the last along the superior endplate, so corner points land at multiples of num_points / 4.
    """
    if num_points < 3:
        raise ValueError(f"num_points must be >= 3, got {num_points}")
    centre = spatial_size / 2.0
    theta = -math.pi / 4 + 2 * math.pi * torch.arange(num_points, dtype=torch.float64) / num_points
    x = centre - _ELLIPSE_HALF_WIDTH * spatial_size * torch.cos(theta)
    y = centre + _ELLIPSE_HALF_HEIGHT * spatial_size * torch.sin(theta)
    return torch.stack([x, y], dim=1).float()


class DiskShapeNet(nn.Module):
    __constants__ = ["has_point_head", "has_seg_head", "export", "num_points", "in_channels", "spatial_size"]

    """ResNet-18-like encoder (BasicBlocks, GroupNorm, LeakyReLU), point head and U-Net decoder.

    Args:
        in_channels: image channels (1 for MR).
        num_points: contour points N predicted by the point head (176 = 4 x 44).
        spatial_size: patch size S; inputs must be (B, in_channels, S, S), S divisible by 2**len(blocks).
        width: channels of the first stage; stage i has width * 2**i (the paper's ResNet-18: 64).
        blocks: residual BasicBlocks per encoder stage ((2, 2, 2, 2) is ResNet-18).
        point_head: build the point regression head (output "pred").
        seg_head: build the U-Net decoder (output "seg").
        norm_groups: GroupNorm groups; must divide width.
        negative_slope: LeakyReLU slope.
        export: forward returns the points (B, 2, N) channel-first, one tensor (needs the point head);
            for TorchScript export and MONAI's checks. Same parameters as `export=False`.

    The point head predicts an offset from the registered buffer `mean_shape` (N, 2) (x, y) patch
    pixels, which defaults to a disk-sized ellipse around the patch centre S/2 (see
    `ellipse_mean_shape`) and can be set from the training data with `set_mean_shape`. Its last
    layer starts near zero, so an untrained network already outputs a plausible disk; it is not
    exactly zero so that the input gradient of "pred" exists from the start (attacks need it).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_points: int = 176,
        spatial_size: int = 128,
        width: int = 16,
        blocks: tuple[int, ...] | list[int] = (2, 2, 2, 2),
        point_head: bool = True,
        seg_head: bool = True,
        norm_groups: int = 8,
        negative_slope: float = 0.01,
        export: bool = False,
    ):
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if not (point_head or seg_head):
            raise ValueError("DiskShapeNet needs at least one head: point_head and seg_head are both False")
        if in_channels < 1 or num_points < 3 or width < 1:
            raise ValueError(f"need in_channels >= 1, num_points >= 3, width >= 1; got {in_channels}, "
                             f"{num_points}, {width}")
        if not blocks or min(blocks) < 1:
            raise ValueError(f"blocks must be a non-empty sequence of positive block counts, got {blocks}")
        if norm_groups < 1 or width % norm_groups:
            raise ValueError(f"norm_groups ({norm_groups}) must divide width ({width}) for GroupNorm")
        factor = 2 ** len(blocks)
        if spatial_size < factor or spatial_size % factor:
            raise ValueError(f"spatial_size ({spatial_size}) must be a positive multiple of 2**len(blocks) = {factor}")

        self.in_channels = in_channels
        self.num_points = num_points
        self.spatial_size = spatial_size
        self.width = width
        self.blocks = blocks
        self.has_point_head = point_head
        self.has_seg_head = seg_head
        self.export = bool(export)
        self.norm_groups = norm_groups
        self.negative_slope = negative_slope
        if self.export and not point_head:
            raise ValueError("DiskShapeNet(export=True) returns the points: it needs point_head=True")

        norm = ("group", {"num_groups": norm_groups})
        act = ("leakyrelu", {"negative_slope": negative_slope, "inplace": True})
        channels = [width * 2**i for i in range(len(blocks))]

        self.stem = Convolution(2, in_channels, width, kernel_size=3, norm=norm, act=act)
        stages = []
        prev = width
        for ch, n in zip(channels, blocks):
            layers = [UnetResBlock(2, prev, ch, kernel_size=3, stride=2, norm_name=norm, act_name=act)]
            layers += [UnetResBlock(2, ch, ch, kernel_size=3, stride=1, norm_name=norm, act_name=act)
                       for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            prev = ch
        self.encoder = nn.ModuleList(stages)

        if point_head:
            self.point_head = nn.Sequential(
                nn.AdaptiveAvgPool2d(_POINT_POOL),
                nn.Flatten(),
                nn.Linear(channels[-1] * _POINT_POOL**2, _POINT_HIDDEN),
                nn.LeakyReLU(negative_slope),
                nn.Linear(_POINT_HIDDEN, num_points * 2),
            )
            last = self.point_head[-1]
            nn.init.normal_(last.weight, std=1e-4)
            nn.init.zeros_(last.bias)
            self.register_buffer("mean_shape", ellipse_mean_shape(num_points, spatial_size))

        if seg_head:
            # Decoder stage j upsamples encoder stage j+1 to stage j's size and merges stage j's
            # features; the last one merges the full-resolution stem.
            skips = [width] + channels[:-1]
            self.decoder = nn.ModuleList(
                UnetUpBlock(2, channels[i], skips[i], kernel_size=3, stride=1, upsample_kernel_size=2,
                            norm_name=norm, act_name=act)
                for i in reversed(range(len(channels)))
            )
            self.seg_out = UnetOutBlock(2, width, 1)

    @torch.no_grad()
    def set_mean_shape(self, points) -> None:
        """Set the point head's base shape, (num_points, 2) (x, y) patch pixels (e.g. the training mean)."""
        if not self.has_point_head:
            raise ValueError("set_mean_shape: this DiskShapeNet has no point head")
        points = torch.as_tensor(np.asarray(points, dtype=np.float32) if not torch.is_tensor(points) else points)
        if points.shape != (self.num_points, 2):
            raise ValueError(f"set_mean_shape: expected shape ({self.num_points}, 2), got {tuple(points.shape)}")
        if not torch.isfinite(points).all():
            raise ValueError("set_mean_shape: the mean shape contains NaN or Inf")
        self.mean_shape.copy_(points.to(self.mean_shape))

    def _check_input(self, x: torch.Tensor) -> None:
        # written for TorchScript too (no torch.is_tensor, no f-strings): the annotation already says Tensor
        s = self.spatial_size
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] != s or x.shape[3] != s:
            raise ValueError("DiskShapeNet expects input of shape (B, " + str(self.in_channels) + ", " + str(s)
                             + ", " + str(s) + "), got " + str(list(x.shape)))
        if not x.is_floating_point():
            raise ValueError("DiskShapeNet expects a floating point input, got " + str(x.dtype))

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for stage in self.encoder:
            features.append(stage(features[-1]))
        return features

    def _points(self, last: torch.Tensor) -> torch.Tensor:
        return self.point_head(last).view(-1, self.num_points, 2) + self.mean_shape

    def _seg(self, features: list[torch.Tensor]) -> torch.Tensor:
        y = features[-1]
        n = len(features)
        for i, up in enumerate(self.decoder):
            y = up(y, features[n - 2 - i])
        return self.seg_out(y)

    def forward(self, x: torch.Tensor):
        """(B, C, S, S) -> {"pred": (B, N, 2) (x, y) patch px, "seg": (B, 1, S, S) logits};
        with `export`: the points (B, 2, N)."""
        if not torch.jit.is_scripting() and not isinstance(x, torch.Tensor):
            raise ValueError(f"DiskShapeNet expects a tensor of shape (B, {self.in_channels}, {self.spatial_size}, "
                             f"{self.spatial_size}), got {type(x).__name__}")
        self._check_input(x)
        features = self._features(x)
        if self.export:
            return self._points(features[-1]).transpose(1, 2)
        out: dict[str, torch.Tensor] = {}
        if self.has_point_head:
            out["pred"] = self._points(features[-1])
        if self.has_seg_head:
            out["seg"] = self._seg(features)
        return out

    # Output names forward_heads accepts, in the order forward computes them.
    HEADS = ("pred", "seg")

    def forward_heads(self, x: torch.Tensor, heads=HEADS) -> dict[str, torch.Tensor]:
        """Only the outputs named in `heads` ("pred", "seg"): the U-Net decoder runs only for "seg".

        The attacks use it for points-only objectives, where the decoder is most of the FLOPs. The
        requested outputs are bit-identical to `forward`'s (the same helpers in the same order); a head
        this network does not have is absent, as in `forward`. Always the dict, also with `export=True`.
        """
        unknown = [h for h in heads if h not in self.HEADS]
        if unknown:
            raise ValueError(f"forward_heads: unknown heads {unknown}, expected a subset of {list(self.HEADS)}")
        self._check_input(x)
        features = self._features(x)
        out: dict[str, torch.Tensor] = {}
        if "pred" in heads and self.has_point_head:
            out["pred"] = self._points(features[-1])
        if "seg" in heads and self.has_seg_head:
            out["seg"] = self._seg(features)
        return out
