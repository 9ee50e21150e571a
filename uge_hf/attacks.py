"""What a hacker may do to the data before training Normally: the attacks `uge-hf evaluate --attack` runs.

Pure functions of uint8 image tensors (N, C, H, W) and their labels; nothing here knows how a release is made.

- `jpeg`, `grayscale`: transform the training images only (the hacker's network then sees clean test images);
- the **linear-projection** attack (Sandoval-Segura et al., "What Can We Learn from Unlearnable Datasets?",
  NeurIPS 2023, their "orthogonal projection"): fit a linear softmax classifier to the training images, and
  project the directions it relies on (its weight rows) out of every image. Class-wise shortcuts a linear model
  can read are removed; what a deep network needs beyond them mostly survives. It yields an *input stage*
  (`LinearProjection`, applied to [0, 1] images) that the hacker's network applies to training **and** test images.
"""

from __future__ import annotations

import hashlib
import io

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def jpeg(images: Tensor, quality: int = 10) -> Tensor:
    """JPEG-compress each uint8 image at `quality` and decode it again."""
    import numpy as np
    from PIL import Image

    out = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
        out.append(torch.from_numpy(np.array(Image.open(buffer).convert("RGB"))).permute(2, 0, 1))
    return torch.stack(out)


def grayscale(images: Tensor) -> Tensor:
    """ITU-R 601 luma, replicated to three channels."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8).expand_as(images).contiguous()


def mean_image(images: Tensor, chunk: int = 4096) -> Tensor:
    """The mean of uint8 `images` on [0, 1] pixels, flattened (C*H*W,), summed in float64 chunks."""
    total = torch.zeros(images[0].numel(), dtype=torch.float64)
    for part in images.split(chunk):
        total += part.reshape(len(part), -1).double().sum(0)
    return (total / (255 * len(images))).float()


def fit_linear_classifier(images: Tensor, labels: Tensor, num_classes: int, epochs: int = 20, batch_size: int = 512,
                          lr: float = 1e-3, seed: int = 0) -> Tensor:
    """Multinomial logistic regression on flattened [0, 1] `images` minus their mean image; its weights (K, C*H*W).

    Minibatch Adam (`epochs` passes, data order from `seed`), weights and bias from zero: deterministic on a CPU.
    The paper fits a bias-free linear model with SGD on uncentred pixels; centring by the mean image (and a bias)
    leaves the weights to describe what tells classes apart rather than the average image.
    """
    mean = mean_image(images)
    linear = nn.Linear(mean.numel(), num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            x = images[batch].reshape(len(batch), -1).float().div_(255) - mean
            loss = F.cross_entropy(linear(x), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return linear.weight.detach().clone()


def orthonormal_rows(weights: Tensor) -> Tensor:
    """An orthonormal basis (rows) of the span of the rows of `weights` (K, D), by QR: (K, D)."""
    q, _ = torch.linalg.qr(weights.double().T)  # reduced QR: q is (D, K) with orthonormal columns
    return q.T.float().contiguous()


class LinearProjection(nn.Module):
    """Input stage x -> x - Q^T Q (x - mean) on flattened [0, 1] images (N, C, H, W) -> same shape, float.

    Removes the components along the rows of `basis` (orthonormal, (K, C*H*W)) of each image's deviation from
    `mean` (C*H*W,): afterwards Q (x' - mean) = 0, and everything orthogonal to Q is untouched. The paper projects
    x - Q^T Q x; the two differ by the same constant image Q^T Q mean for every input, which here keeps the
    images near [0, 1]. The output is neither rounded nor clamped (the network takes it as is).

    `fingerprint` names what determined the stage (for a cache key); see `linear_projection_stage`.
    """

    def __init__(self, basis: Tensor, mean: Tensor, fingerprint: str | None = None):
        super().__init__()
        self.register_buffer("basis", basis.float())
        self.register_buffer("mean", mean.float())
        if fingerprint is not None:
            self.fingerprint = fingerprint

    def forward(self, images: Tensor) -> Tensor:
        flat = images.reshape(len(images), -1)
        coefficients = (flat - self.mean) @ self.basis.T
        return (flat - coefficients @ self.basis).reshape(images.shape)

    def extra_repr(self) -> str:
        return f"directions={self.basis.shape[0]}, features={self.basis.shape[1]}"


def linear_projection_stage(images: Tensor, labels: Tensor, num_classes: int, epochs: int = 20) -> LinearProjection:
    """The linear-projection attack's input stage for training images `images` (uint8) and their labels.

    Its `fingerprint` hashes the images, labels and fitting settings: the stage is a deterministic function of
    them, so a cached network trained behind it is found again without comparing floats.
    """
    weights = fit_linear_classifier(images, labels, num_classes, epochs=epochs)
    digest = hashlib.sha256(f"linear-projection/classes={num_classes}/epochs={epochs}".encode())
    for tensor in (images, labels):
        digest.update(tensor.contiguous().numpy().tobytes())
    return LinearProjection(orthonormal_rows(weights), mean_image(images), fingerprint=digest.hexdigest()[:24])
