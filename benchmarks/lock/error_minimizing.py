"""Sample-wise error-minimising noise (Huang et al., "Unlearnable Examples", ICLR 2021) for the lock poison sweep.

Not (yet) a library poison: it trains a surrogate, so it is measured here first, on the validation slice, and
would join `uge_hf.poisons` only if it beat the model-free ones. The bi-level min-min of the paper, at CPU scale:

    repeat `rounds` times (or until the surrogate fits x + delta to `stop_accuracy`):
        train the surrogate `train_steps` SGD steps on (x + delta, y)              (augmentation: crop + flip)
        for every batch: `pgd_steps` signed-gradient steps of size `step` levels that *lower* the surrogate's
        loss on x + delta, delta kept within +-bound and x + delta within 0..255

Returns integer delta (N, C, H, W) int16, |delta| <= bound, x + delta in 0..255.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uge_hf.inputs import normalize
from uge_hf.specs import build_model
from uge_hf.training import random_crop_flip


def error_minimizing(images: torch.Tensor, labels: torch.Tensor, num_classes: int, bound: int = 10,
                     surrogate: str = "cnn-w16-seed7", rounds: int = 8, train_steps: int = 20, pgd_steps: int = 10,
                     step: float = 2.0, batch_size: int = 256, stop_accuracy: float = 0.99, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    model = build_model(surrogate, num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    source = images.float()
    delta = torch.zeros_like(source)
    generator = torch.Generator().manual_seed(seed)
    n = len(images)
    for round_ in range(rounds):
        model.train()
        for _ in range(train_steps):
            batch = torch.randint(0, n, (128,), generator=generator)
            x = ((source[batch] + delta[batch]) / 255)
            (x,) = random_crop_flip([x], generator)
            loss = F.cross_entropy(model(normalize(x)), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        for start in range(0, n, batch_size):
            x, d, y = source[start : start + batch_size], delta[start : start + batch_size].clone(), labels[start : start + batch_size]
            for _ in range(pgd_steps):
                d.requires_grad_(True)
                loss = F.cross_entropy(model(normalize((x + d) / 255)), y)
                grad, = torch.autograd.grad(loss, d)
                with torch.no_grad():
                    d = (d - step * grad.sign()).clamp(-bound, bound)
                    d = (x + d).clamp(0, 255) - x
            delta[start : start + batch_size] = d.detach()
            with torch.no_grad():
                correct += (model(normalize((x + d) / 255)).argmax(1) == y).sum().item()
        accuracy = correct / n
        print(f"error-minimizing round {round_}: surrogate accuracy on x + delta {accuracy:.3f}", flush=True)
        if accuracy >= stop_accuracy:
            break
    return delta.round().clamp(-bound, bound).to(torch.int16)
