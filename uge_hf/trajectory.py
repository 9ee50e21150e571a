"""The authorized network's own training trajectory on the clean data: the checkpoints L_gm samples from."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import Recipe
from .specs import build_model
from .training import train_classifier

State = dict[str, Tensor]


class Trajectory:
    """Checkpoints theta_0 .. theta_E of one authorized network trained with the recipe on clean data."""

    def __init__(self, spec: str, num_classes: int, states: list[State]):
        self.spec = spec
        self.num_classes = num_classes
        self.states = states

    @property
    def final(self) -> State:
        return self.states[-1]

    def model(self, state: State | None = None) -> nn.Module:
        """A fresh network of this spec holding `state` (default: the final checkpoint)."""
        model = build_model(self.spec, self.num_classes)
        model.load_state_dict(self.final if state is None else state)
        return model

    def save(self, path: Path) -> None:
        flat = {f"{epoch}/{name}": tensor for epoch, state in enumerate(self.states) for name, tensor in state.items()}
        save_file(flat, str(path), metadata={"spec": self.spec, "num_classes": str(self.num_classes)})

    @classmethod
    def load(cls, path: Path, spec: str, num_classes: int) -> Trajectory:
        flat = load_file(str(path))
        states: dict[int, State] = {}
        for key, tensor in flat.items():
            epoch, name = key.split("/", 1)
            states.setdefault(int(epoch), {})[name] = tensor
        return cls(spec, num_classes, [states[epoch] for epoch in sorted(states)])


def _snapshot(model: nn.Module) -> State:
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}


def compute_trajectory(
    spec: str, images: Tensor, labels: Tensor, num_classes: int, recipe: Recipe, device: torch.device | str = "cpu"
) -> Trajectory:
    """Train `spec` from its declared initialisation with `recipe`, keeping theta_0 and every epoch's end."""
    model = build_model(spec, num_classes)
    states = [_snapshot(model)]
    train_classifier(
        model,
        images,
        labels,
        recipe,
        device=device,
        on_epoch_end=lambda epoch, trained: states.append(_snapshot(trained)),
        description=f"trajectory {spec}",
    )
    return Trajectory(spec, num_classes, states)
