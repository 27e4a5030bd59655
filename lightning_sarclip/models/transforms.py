"""Per-image transforms for library use (``create_model`` returns them): SAR image in [0, 1] -> model input.

Training inside the framework does not use these: datamodules yield [0, 1] batches and the module's
:class:`~lightning_sarclip.models.sar_stem.SARInputAdapter` maps and normalises them on the device. Both paths
share :func:`~lightning_sarclip.models.sar_stem.map_channels`, so a model sees the same input either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lightning_sarclip.models.sar_stem import SARInputAdapter


def to_chw_tensor(image: Any) -> torch.Tensor:
    """Accept PIL, numpy (HxW, HxWxC) or torch (CxHxW) and return float32 CxHxW.

    uint8 / uint16 inputs are scaled by their type's maximum; float inputs are taken as already in [0, 1].
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255.0
        elif array.dtype == np.uint16:
            array = array.astype(np.float32) / 65535.0
        else:
            array = array.astype(np.float32, copy=False)
        if array.ndim == 2:
            array = array[None]
        elif array.ndim == 3:
            array = np.moveaxis(array, -1, 0)
        else:
            raise ValueError(f"image: expected HxW or HxWxC array, got shape {array.shape}")
        return torch.from_numpy(np.ascontiguousarray(array))
    if isinstance(image, torch.Tensor):
        tensor = image.float()
        if tensor.ndim == 2:
            tensor = tensor[None]
        if tensor.ndim != 3:
            raise ValueError(f"image: expected CxHxW tensor, got shape {tuple(tensor.shape)}")
        return tensor
    raise TypeError(f"image: expected PIL image, numpy array or tensor, got {type(image).__name__}")


class SARImageTransform:
    """Resize (train: random resized crop + flips; eval: resize + centre crop) then map channels and normalise."""

    def __init__(
        self,
        image_size: int,
        in_chans: int,
        channel_mode: str,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool = False,
        scale: tuple[float, float] = (0.8, 1.0),
    ) -> None:
        self.image_size = int(image_size)
        self.in_chans = in_chans
        self.train = train
        self.scale = scale
        self.adapter = SARInputAdapter(in_chans, channel_mode, mean, std)

    def __call__(self, image: Any) -> torch.Tensor:
        x = to_chw_tensor(image)
        if x.shape[0] != self.in_chans:
            if x.shape[0] == 3 and self.in_chans == 1:
                x = x.mean(dim=0, keepdim=True)  # 8-bit grey SAR chips are often saved as RGB
            else:
                raise ValueError(f"image: expected {self.in_chans} channels, got {x.shape[0]}")
        x = self._crop_train(x) if self.train else self._crop_eval(x)
        return self.adapter(x[None])[0]

    def _crop_eval(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.image_size / min(h, w)
        nh, nw = max(self.image_size, round(h * s)), max(self.image_size, round(w * s))
        x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
        top, left = (nh - self.image_size) // 2, (nw - self.image_size) // 2
        return x[:, top : top + self.image_size, left : left + self.image_size]

    def _crop_train(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        area = float(torch.empty(1).uniform_(*self.scale)) * h * w
        side = int(min(h, w, round(area**0.5)))
        top = int(torch.randint(0, h - side + 1, (1,)))
        left = int(torch.randint(0, w - side + 1, (1,)))
        x = x[:, top : top + side, left : left + side]
        x = F.interpolate(
            x[None], size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
        )[0]
        if torch.rand(1) < 0.5:
            x = x.flip(-1)
        if torch.rand(1) < 0.5:
            x = x.flip(-2)
        return x.clamp(0.0, 1.0)
