"""Tensor transforms for one sample, written on plain torch because torchvision is not a dependency.

Each transform takes one ``(C, H, W)`` image (crops, flips and resizes also take a ``(C, L)``
signal) and returns a new tensor. Random ones draw from torch's global RNG, so a training loop that
seeds or restores ``torch.get_rng_state()`` gets the same augmented samples again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from prunekit.errors import ConfigError

Size = int | Sequence[int]
Transform = Callable[[Tensor], Tensor]

__all__ = [
    "CenterCrop",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "resize",
]


def _spatial(x: Tensor) -> tuple[int, ...]:
    if x.dim() not in (2, 3):
        raise ConfigError(
            f"expected a (C, H, W) image or (C, L) signal, got shape {tuple(x.shape)}"
        )
    return tuple(x.shape[1:])


def _full_size(size: Size, dims: int) -> tuple[int, ...]:
    """An int means the same length on every spatial axis; a sequence must name each axis."""
    sizes = (size,) * dims if isinstance(size, int) else tuple(int(s) for s in size)
    if len(sizes) != dims or any(s <= 0 for s in sizes):
        raise ConfigError(
            f"size {size!r} does not fit {dims} spatial dimension(s) of positive length"
        )
    return sizes


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear (linear for signals) resize of a batch ``(N, C, *spatial)`` to exactly ``size``.

    Antialiasing is switched on when any axis shrinks, so downscaled images do not alias. 1-D
    signals go through the 2-D path as ``(N, C, 1, L)`` because only that path can antialias.
    """
    size = tuple(int(s) for s in size)
    spatial = tuple(x.shape[2:])
    if spatial == size:
        return x
    one_d = x.dim() == 3
    if one_d:
        x, spatial, size = x.unsqueeze(2), (1, *spatial), (1, *size)
    shrink = any(s < o for s, o in zip(size, spatial, strict=True))
    out = F.interpolate(
        x.float(), size=size, mode="bilinear", align_corners=False, antialias=shrink
    )
    return out.squeeze(2) if one_d else out


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Tensor) -> Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class Normalize:
    """``(x - mean) / std`` per channel, so every channel reaches the model centred and scaled."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ConfigError(
                f"Normalize needs equal-length mean/std with std > 0, got {mean}, {std}"
            )
        self.mean = torch.tensor([float(m) for m in mean])
        self.std = torch.tensor([float(s) for s in std])

    def __call__(self, x: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Resize:
    """Resize to ``size``: a pair gives ``(H, W)`` exactly; an int sets the shorter image side
    (keeping the aspect ratio, as ImageNet evaluation expects) or the length of a signal."""

    def __init__(self, size: Size) -> None:
        self.size = size

    def target(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if not isinstance(self.size, int):
            return _full_size(self.size, len(spatial))
        if len(spatial) == 1:
            return (self.size,)
        h, w = spatial
        if h <= w:
            return self.size, max(1, round(w * self.size / h))
        return max(1, round(h * self.size / w)), self.size

    def __call__(self, x: Tensor) -> Tensor:
        return resize(x.unsqueeze(0), self.target(_spatial(x)))[0]

    def __repr__(self) -> str:
        return f"Resize({self.size!r})"


def _crop(x: Tensor, start: Sequence[int], size: Sequence[int]) -> Tensor:
    index = [slice(None)] + [slice(b, b + s) for b, s in zip(start, size, strict=True)]
    return x[tuple(index)]


class CenterCrop:
    """Cut the central ``size`` window (zero-padding first if the input is smaller)."""

    def __init__(self, size: Size) -> None:
        self.size = size

    def __call__(self, x: Tensor) -> Tensor:
        spatial = _spatial(x)
        size = _full_size(self.size, len(spatial))
        grow = [max(0, s - o) for s, o in zip(size, spatial, strict=True)]
        if any(grow):
            pad: list[int] = []
            for g in reversed(grow):  # F.pad wants the last axis first
                pad += [g // 2, g - g // 2]
            x = F.pad(x, pad)
            spatial = tuple(x.shape[1:])
        start = [(o - s) // 2 for s, o in zip(size, spatial, strict=True)]
        return _crop(x, start, size)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size!r})"


class RandomCrop:
    """Pad every side by ``padding`` with ``fill``, then cut a random ``size`` window.

    This is the shift augmentation of the CIFAR recipes. ``fill`` may be one value or one per
    channel: on normalised data, pass the normalised value of black so padding looks like black.
    """

    def __init__(self, size: Size, padding: int = 0, fill: float | Sequence[float] = 0.0) -> None:
        if padding < 0:
            raise ConfigError(f"RandomCrop padding must be >= 0, got {padding}")
        self.size = size
        self.padding = int(padding)
        self.fill = fill

    def _pad(self, x: Tensor) -> Tensor:
        p = self.padding
        if p == 0:
            return x
        spatial = _spatial(x)
        out_shape = (x.shape[0], *(s + 2 * p for s in spatial))
        fill = torch.as_tensor(self.fill, dtype=x.dtype).reshape((-1,) + (1,) * len(spatial))
        out = fill.expand(out_shape).clone()
        _crop(out, [p] * len(spatial), spatial).copy_(x)
        return out

    def __call__(self, x: Tensor) -> Tensor:
        x = self._pad(x)
        spatial = _spatial(x)
        size = _full_size(self.size, len(spatial))
        if any(s > o for s, o in zip(size, spatial, strict=True)):
            raise ConfigError(f"RandomCrop size {size} is larger than the padded input {spatial}")
        start = [int(torch.randint(0, o - s + 1, ())) for s, o in zip(size, spatial, strict=True)]
        return _crop(x, start, size)

    def __repr__(self) -> str:
        return f"RandomCrop({self.size!r}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror the last axis with probability ``p``; only for data whose labels survive mirroring."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, x: Tensor) -> Tensor:
        if float(torch.rand(())) < self.p:
            return x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomResizedCrop:
    """Cut a random window of random area fraction and aspect ratio, resized to ``size``.

    The ImageNet training augmentation: ten tries to find a window inside the image, then a
    centre crop of the nearest allowed aspect ratio as the fall-back.
    """

    def __init__(
        self,
        size: Size,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
            raise ConfigError(f"RandomResizedCrop needs 0 < low <= high, got {scale}, {ratio}")
        self.size = size
        self.scale = scale
        self.ratio = ratio

    def window(self, height: int, width: int) -> tuple[int, int, int, int]:
        """A random ``(top, left, h, w)`` window inside a ``height`` x ``width`` image."""
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(self.scale[0], self.scale[1]))
            aspect = math.exp(float(torch.empty(()).uniform_(log_lo, log_hi)))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, ()))
                left = int(torch.randint(0, width - w + 1, ()))
                return top, left, h, w
        aspect = width / height
        if aspect < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif aspect > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            h, w = height, width
        h, w = max(1, min(h, height)), max(1, min(w, width))
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, x: Tensor) -> Tensor:
        spatial = _spatial(x)
        size = _full_size(self.size, len(spatial))
        if len(spatial) == 1:
            raise ConfigError("RandomResizedCrop works on (C, H, W) images only")
        top, left, h, w = self.window(*spatial)
        return resize(_crop(x, (top, left), (h, w)).unsqueeze(0), size)[0]

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size!r}, scale={self.scale}, ratio={self.ratio})"
