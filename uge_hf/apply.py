"""Applying a trained generator: uint8 images in, uint8 protected images out, the bound enforced after rounding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .errors import UgeError
from .inputs import to_unit


def perturb(generator: nn.Module, x: Tensor, rho: float) -> Tensor:
    """x_u = clamp(x + G(x), x - rho, x + rho) within [0, 1] (Eq. 3, with G predicting the residual).

    `x`: float [0, 1] images (N, 3, H, W); the result has the same shape. The solver trains G through it.
    """
    delta = generator(x).clamp(-rho, rho)
    return (x + delta).clamp(0, 1)


def quantize_within_bound(source: Tensor, protected: Tensor, pixel_bound: int) -> Tensor:
    """Round [0, 1] `protected` to 8 bits, then clamp to `source` +- `pixel_bound` levels.

    Args:
        source: uint8 (any shape) pixels the release is bounded against.
        protected: float, same shape, nominally in [0, 1]; any value is accepted.
        pixel_bound: the bound in 8-bit levels (>= 0).

    Returns uint8 pixels with |released - source| <= pixel_bound for every pixel, by construction, whatever
    `protected` holds: a NaN or infinite value (a diverged optimiser; NaN passes round/min/max/clamp and becomes
    0 in the cast to uint8) takes the source pixel; huge values are clamped like any other. Rounding alone can
    also cross the bound: with rho = 0.04 (10.2 levels) a float offset of 10.2 rounds to 10, but 10.6 from a
    clamp near the bound would round to 11, hence the clamp in integer space after rounding.
    """
    levels = protected.float() * 255
    source = source.to(levels.device, torch.int32)
    levels = torch.round(torch.where(torch.isfinite(levels), levels, source.float()))
    bounded = torch.maximum(torch.minimum(levels, source + pixel_bound), source - pixel_bound)
    return bounded.clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def protect_images(
    generator: nn.Module, images: Tensor, rho: float, pixel_bound: int, device, batch_size: int = 256
) -> Tensor:
    """Protected uint8 copies of uint8 `images` (N x 3 x H x W), computed batch by batch, returned on the CPU.

    A generator whose output is not finite (its training diverged) is a UgeError rather than a release of
    unchanged images (which is what `quantize_within_bound` would make of NaN).
    """
    generator.to(device).eval()
    out = []
    for chunk in images.split(batch_size):
        x_u = perturb(generator, to_unit(chunk.to(device)), rho)
        if not torch.isfinite(x_u).all():
            raise UgeError("the generator's output is not finite (its training diverged); nothing was written")
        out.append(quantize_within_bound(chunk, x_u, pixel_bound).cpu())
    return torch.cat(out)


def perturbation_stats(source: Tensor, protected: Tensor) -> dict[str, float]:
    """How far the release is from the source: L-inf and mean |diff| in 8-bit levels, PSNR in dB."""
    diff = protected.float() - source.float()
    mse = diff.pow(2).mean().item()
    return {
        "linf_levels": diff.abs().max().item(),
        "mean_abs_levels": round(diff.abs().mean().item(), 4),
        "psnr_db": round(10 * math.log10(255**2 / mse), 2) if mse > 0 else float("inf"),
    }


def preview_grid(source: Tensor, protected: Tensor, count: int = 8, scale: int = 4) -> "Image.Image":
    """Rows: original, noise amplified to the full range, protected; `count` images, upscaled for viewing."""
    from PIL import Image

    source, protected = source[:count], protected[:count]
    noise = protected.float() - source.float()
    amplified = (noise / max(1.0, noise.abs().max().item()) * 127.5 + 127.5).round().to(torch.uint8)
    rows = [torch.cat(list(images), dim=2) for images in (source, amplified, protected)]  # 3 x H x (count*W)
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    image = Image.fromarray(grid, mode="RGB")
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
