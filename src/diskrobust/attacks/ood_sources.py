"""Start images for the OOD attack: noise and natural images, (N, 1, size, size) float32 in [0, 1].

The natural images are scikit-image's sample images that ship inside its wheel (no download); they
are named by their source, not by what they might resemble.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# scikit-image sample images bundled in the wheel (loadable without pooch/network); colour ones are
# converted to grey.
NATURAL_IMAGES = ("camera", "moon", "brick", "grass", "gravel", "coins", "text", "page", "clock", "cell",
                  "shepp_logan_phantom", "microaneurysms", "astronaut", "coffee", "chelsea", "rocket",
                  "hubble_deep_field", "immunohistochemistry", "retina")


def _check_size(n: int, size: int | tuple[int, int]) -> tuple[int, int]:
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n}")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def uniform_noise(n: int, size: int | tuple[int, int] = 128, generator: torch.Generator | None = None,
                  device=None) -> torch.Tensor:
    """Per-pixel U[0, 1] noise, (n, 1, H, W)."""
    h, w = _check_size(n, size)
    return torch.rand((n, 1, h, w), generator=generator, device=device)


def box_noise(n: int, size: int | tuple[int, int] = 128, cells: int = 16, generator: torch.Generator | None = None,
              device=None) -> torch.Tensor:
    """Blocky noise: a (cells x cells) grid of U[0, 1] values upsampled (nearest) to (n, 1, H, W)."""
    h, w = _check_size(n, size)
    if int(cells) != cells or cells < 1:
        raise ValueError(f"cells must be an integer >= 1, got {cells}")
    coarse = torch.rand((n, 1, cells, cells), generator=generator, device=device)
    return F.interpolate(coarse, size=(h, w), mode="nearest")


def _load_natural(name: str) -> np.ndarray:
    from skimage import data
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.util import img_as_float

    if name not in NATURAL_IMAGES:
        raise ValueError(f"unknown natural image {name!r}; choose from {NATURAL_IMAGES}")
    img = getattr(data, name)()
    if img.ndim == 3:
        img = rgb2gray(rgba2rgb(img) if img.shape[-1] == 4 else img)
    return img_as_float(img).astype(np.float64)


def natural_image(name: str, size: int | tuple[int, int] = 128) -> torch.Tensor:
    """One scikit-image sample image: central square crop, resized (anti-aliased), min-max scaled, (1, H, W)."""
    from skimage.transform import resize

    h, w = _check_size(1, size)
    img = _load_natural(name)
    rows, cols = img.shape
    side = min(rows, cols)
    top, left = (rows - side) // 2, (cols - side) // 2
    img = resize(img[top:top + side, left:left + side], (h, w), anti_aliasing=True)
    lo, hi = img.min(), img.max()
    img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return torch.from_numpy(img.astype(np.float32))[None]


def natural_images(n: int | None = None, size: int | tuple[int, int] = 128,
                   names: tuple[str, ...] | list[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """The first n of `names` (default NATURAL_IMAGES, cycled if n is larger) -> ((n, 1, H, W), names used)."""
    names = list(NATURAL_IMAGES if names is None else names)
    if not names:
        raise ValueError("names must not be empty")
    n = len(names) if n is None else n
    _check_size(n, size)
    chosen = [names[i % len(names)] for i in range(n)]
    cache: dict[str, torch.Tensor] = {}
    for name in chosen:
        if name not in cache:
            cache[name] = natural_image(name, size)
    images = [cache[name] for name in chosen]
    return torch.stack(images), chosen
