"""Feeding 1- or 2-channel SAR into a 3-channel RGB CLIP stem.

Data loaders hand the model SAR images scaled to [0, 1] with ``in_chans`` channels (1: single-pol amplitude,
2: dual-pol VV/VH). Pretrained CLIP towers expect 3 normalised RGB channels. :class:`SARInputAdapter` closes the
gap on the device, inside ``forward`` (so DDP/FSDP see every tower call), in one of these modes:

``replicate``    1 channel  -> (x, x, x)                              stem untouched
``vv_vh_mean``   2 channels -> (VV, VH, (VV + VH) / 2)                stem untouched (CAESAR-SARCLIP's convention)
``identity``     3 channels -> as is
``fold``         1 or 2 channels go straight into a patch embedding whose pretrained RGB kernels were folded
                 into ``in_chans`` kernels (1 ch: sum of R, G, B; 2 ch: VV gets R + B/2, VH gets G + B/2), i.e.
                 the linear map of ``replicate`` / ``vv_vh_mean`` moved into the weights. It is exact when the
                 three normalisation means and stds are equal, and a close approximation otherwise (the stem has
                 no bias to absorb per-channel offsets). A folded model no longer has open_clip's 3-channel
                 ``conv1``, so it cannot be exported back to a stock open_clip architecture.
``auto``         replicate for 1 channel, vv_vh_mean for 2, identity for 3.

Normalisation (``mean``/``std``) is the checkpoint's own by default (open_clip's ``preprocess_cfg``), or any list
given in the config (for example statistics measured on SAR data).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

CHANNEL_MODES = ("auto", "replicate", "vv_vh_mean", "identity", "fold")


def resolve_channel_mode(in_chans: int, mode: str) -> str:
    """Turn ``auto`` into a concrete mode and check that the mode fits ``in_chans``."""
    if mode not in CHANNEL_MODES:
        raise ValueError(f"channel_mode: expected one of {CHANNEL_MODES}, got {mode!r}")
    if in_chans not in (1, 2, 3):
        raise ValueError(f"in_chans: expected 1 (single-pol), 2 (dual-pol VV/VH) or 3, got {in_chans}")
    if mode == "auto":
        return {1: "replicate", 2: "vv_vh_mean", 3: "identity"}[in_chans]
    allowed = {"replicate": (1,), "vv_vh_mean": (2,), "identity": (3,), "fold": (1, 2)}[mode]
    if in_chans not in allowed:
        raise ValueError(f"channel_mode={mode!r} needs in_chans in {allowed}, got in_chans={in_chans}")
    return mode


def _as_three(values: Sequence[float], name: str) -> torch.Tensor:
    values = [float(v) for v in values]
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"{name}: expected 1 or 3 values (per RGB channel of the stem), got {len(values)}")
    return torch.tensor(values)


def map_channels(image: torch.Tensor, mode: str) -> torch.Tensor:
    """Apply the channel map of ``mode`` to a (B, C, H, W) batch (``fold`` passes channels through)."""
    if mode == "replicate":
        return image.expand(-1, 3, -1, -1)
    if mode == "vv_vh_mean":
        return torch.cat([image, image.mean(dim=1, keepdim=True)], dim=1)
    return image


class SARInputAdapter(nn.Module):
    """Map a [0, 1] SAR batch with ``in_chans`` channels to the normalised input of a CLIP image tower."""

    def __init__(
        self,
        in_chans: int = 1,
        channel_mode: str = "auto",
        mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
        std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.mode = resolve_channel_mode(in_chans, channel_mode)
        mean3, std3 = _as_three(mean, "image_mean"), _as_three(std, "image_std")
        if self.mode == "fold":
            # One statistic per SAR channel: the average of the RGB statistics its kernel was folded from.
            mean_in = mean3.mean().repeat(in_chans)
            std_in = std3.mean().repeat(in_chans)
        else:
            mean_in, std_in = mean3, std3
        # Buffers (not parameters): they move with the module and are saved, but never train.
        self.register_buffer("mean", mean_in.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_in.view(1, -1, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[1] != self.in_chans:
            raise ValueError(
                f"SAR input: expected a (B, {self.in_chans}, H, W) batch, got shape {tuple(image.shape)}"
            )
        image = map_channels(image, self.mode)
        return (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}, mode={self.mode}"


def fold_patch_embedding(visual: nn.Module, in_chans: int) -> None:
    """Replace the RGB patch embedding of an open_clip image tower by an ``in_chans`` one, folding its weights.

    Works for open_clip's ``VisionTransformer`` (``conv1``) and ``ModifiedResNet`` (``conv1``); timm towers
    expose ``trunk.patch_embed.proj``.
    """
    owner, attr = _find_rgb_conv(visual)
    conv: nn.Conv2d = getattr(owner, attr)
    weight = conv.weight.detach()
    if in_chans == 1:
        folded = weight.sum(dim=1, keepdim=True)
    elif in_chans == 2:
        folded = torch.stack([weight[:, 0] + weight[:, 2] / 2, weight[:, 1] + weight[:, 2] / 2], dim=1)
    else:
        raise ValueError(f"fold: in_chans must be 1 or 2, got {in_chans}")
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(folded)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    setattr(owner, attr, new.to(weight.device, weight.dtype))


def _find_rgb_conv(visual: nn.Module) -> tuple[nn.Module, str]:
    candidates = [(visual, "conv1")]
    trunk = getattr(visual, "trunk", None)
    patch_embed = getattr(trunk, "patch_embed", None) if trunk is not None else None
    if patch_embed is not None:
        candidates.append((patch_embed, "proj"))
    for owner, attr in candidates:
        conv = getattr(owner, attr, None)
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
            return owner, attr
    raise ValueError(
        f"channel_mode='fold': found no 3-channel patch embedding in image tower {type(visual).__name__}; "
        "use 'replicate' or 'vv_vh_mean' instead"
    )
