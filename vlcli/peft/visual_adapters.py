"""Visual adapters inside the Bottleneck blocks of open_clip's ModifiedResNet (spec §3.9).

``vis_adapter_type`` is ``<positions>-<kind>``: positions any of ``front`` (parallel to conv1),
``middle`` (parallel to conv2), ``back`` (parallel to conv3, after the block's average pool) and
``transition`` (after the residual sum: ``out = ReLU(out + V(out))``); kind ``bottleneck``
(1×1 conv c_in → c_in // vis_reduction_factor [→ BN] → ReLU → 1×1 conv → c_out [→ BN]) or ``basic``
(1×1 conv c_in → c_out [→ BN]). With BN (default) a branch is ``act(BN(conv(x)) + V(x))``; with
``remove_bn_vis_adapter`` the adapter output enters the frozen BN: ``act(BN(conv(x) + V(x)))`` and the
adapters have no BN of their own. Unlike the original (spec §7.14), every block of every stage gets the
same setting. Convolutions keep PyTorch's default initialisation, as in the original.

The blocks' classes are swapped to :class:`AdaptedBottleneck` (their own weights and keys are kept);
the adapters are registered on the block as ``vis_adapters.<position>``.
"""

from __future__ import annotations

import torch
from torch import nn

POSITIONS = ("front", "middle", "back", "transition")
KINDS = ("bottleneck", "basic")


class VisualAdapter(nn.Module):
    parameter_group = "visual adapters"

    def __init__(self, c_in: int, c_out: int, kind: str, reduction: int, use_bn: bool):
        super().__init__()
        if kind == "bottleneck":
            mid = max(1, c_in // reduction)
            layers: list[nn.Module] = [nn.Conv2d(c_in, mid, 1, bias=False)]
            if use_bn:
                layers.append(nn.BatchNorm2d(mid))
            layers += [nn.ReLU(), nn.Conv2d(mid, c_out, 1, bias=False)]
        elif kind == "basic":
            layers = [nn.Conv2d(c_in, c_out, 1, bias=False)]
        else:
            raise ValueError(f"visual adapter kind {kind!r}: expected one of {', '.join(KINDS)}")
        if use_bn:
            layers.append(nn.BatchNorm2d(c_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def _import_bottleneck():
    from open_clip.modified_resnet import Bottleneck

    return Bottleneck


class AdaptedBottleneck(_import_bottleneck()):
    """open_clip's Bottleneck with visual adapters at the configured positions."""

    use_bn: bool = True

    def _branch(self, position: str, x, conv, bn, act):
        adapters = self.vis_adapters
        if position not in adapters:
            out = bn(conv(x))
        elif self.use_bn:
            out = bn(conv(x)) + adapters[position](x)
        else:
            out = bn(conv(x) + adapters[position](x))
        return act(out) if act is not None else out

    def forward(self, x: torch.Tensor):
        identity = x
        out = self._branch("front", x, self.conv1, self.bn1, self.act1)
        out = self._branch("middle", out, self.conv2, self.bn2, self.act2)
        out = self.avgpool(out)
        out = self._branch("back", out, self.conv3, self.bn3, None)
        if self.downsample is not None:
            identity = self.downsample(x)
        out = self.act3(out + identity)
        if "transition" in self.vis_adapters:
            out = torch.relu(out + self.vis_adapters["transition"](out))
        return out


def parse_type(vis_adapter_type: str) -> tuple[list[str], str]:
    """``"front-middle-bottleneck"`` -> (["front", "middle"], "bottleneck")."""
    parts = vis_adapter_type.split("-")
    positions, kind = parts[:-1], parts[-1]
    if not positions or kind not in KINDS or any(p not in POSITIONS for p in positions):
        raise ValueError(
            f"--vis_adapter_type {vis_adapter_type!r}: expected <positions>-<kind> with positions from "
            f"{', '.join(POSITIONS)} and kind {' or '.join(KINDS)}"
        )
    return positions, kind


def inject_visual_adapters(resnet: nn.Module, vis_adapter_type: str, reduction: int, remove_bn: bool) -> int:
    """Add visual adapters to every Bottleneck of ``resnet``; return how many blocks were adapted."""
    positions, kind = parse_type(vis_adapter_type)
    bottleneck = _import_bottleneck()
    use_bn = not remove_bn
    count = 0
    for block in resnet.modules():
        if not isinstance(block, bottleneck):
            continue
        planes = block.conv1.out_channels
        channels = {
            "front": (block.conv1.in_channels, planes),
            "middle": (planes, planes),
            "back": (planes, planes * bottleneck.expansion),
            "transition": (planes * bottleneck.expansion, planes * bottleneck.expansion),
        }
        block.__class__ = AdaptedBottleneck
        block.use_bn = use_bn
        block.vis_adapters = nn.ModuleDict(
            {p: VisualAdapter(*channels[p], kind, reduction, use_bn) for p in positions}
        )
        count += 1
    return count
