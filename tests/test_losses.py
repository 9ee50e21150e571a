"""Behaviour of the three UGE losses on small tensors and a tiny BatchNorm network."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from uge_hf.errors import UgeError
from uge_hf.losses import (
    feature_deviation_loss,
    gradient_matching_loss,
    least_similar_class,
    undistill_loss,
)


def tiny_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(6, 3, 8, 8, generator=generator), torch.tensor([0, 1, 2, 0, 1, 2])


def test_gradient_matching_is_zero_for_identical_batches(batch):
    model = tiny_bn_net()
    x, y = batch
    loss = gradient_matching_loss(model, model.state_dict(), x, x.clone(), y)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_gradient_matching_is_positive_bounded_and_reaches_x_u(batch):
    model = tiny_bn_net()
    x, y = batch
    x_u = torch.randn_like(x).requires_grad_(True)
    loss = gradient_matching_loss(model, model.state_dict(), x, x_u, y)
    assert 0.0 < loss.item() <= 2.0
    loss.backward()
    assert x_u.grad is not None
    assert torch.isfinite(x_u.grad).all()
    assert x_u.grad.abs().sum() > 0


def test_gradient_matching_leaves_state_and_model_untouched(batch):
    model = tiny_bn_net().eval()
    x, y = batch
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    # A checkpoint different from the module's own weights, to see that the loss reads it and does not write it.
    state = {name: tensor + 0.1 if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    before = {name: tensor.clone() for name, tensor in state.items()}
    own_before = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    x_u = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    gradient_matching_loss(model, state, x, x_u, y).backward()

    for name in before:
        assert torch.equal(state[name], before[name]), name
        assert torch.equal(model.state_dict()[name], own_before[name]), name
    assert not model.training, "the caller's train/eval mode must be restored"
    assert all(param.grad is None for param in model.parameters())


def test_gradient_matching_uses_the_given_checkpoint(batch):
    model = tiny_bn_net()
    x, y = batch
    x_u = x + 0.3 * torch.randn_like(x)
    at_own = gradient_matching_loss(model, model.state_dict(), x, x_u, y)
    other = {name: torch.randn_like(t) if t.is_floating_point() else t for name, t in model.state_dict().items()}
    other["1.running_var"] = other["1.running_var"].abs()
    at_other = gradient_matching_loss(model, other, x, x_u, y)
    assert at_own.item() != pytest.approx(at_other.item(), abs=1e-4)


def test_least_similar_class_hand_example():
    classes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    features = torch.tensor([[2.0, 0.1], [0.1, 3.0], [-1.0, 0.2]])
    # Sample 0 (near class 0): least similar is class 2; sample 1 (near class 1): class 3;
    # sample 2 is class 2 itself, whose own embedding must be skipped: least similar other class is 0.
    labels = torch.tensor([0, 1, 2])
    assert least_similar_class(features, classes, labels).tolist() == [2, 3, 0]
    # Even when the true class is the least similar one, it is never chosen.
    assert least_similar_class(features, classes, torch.tensor([2, 3, 0])).tolist() == [3, 2, 3]


def test_least_similar_class_never_returns_the_true_label():
    generator = torch.Generator().manual_seed(0)
    features, classes = torch.randn(200, 5, generator=generator), torch.randn(4, 5, generator=generator)
    labels = torch.randint(0, 4, (200,), generator=generator)
    targets = least_similar_class(features, classes, labels)
    assert (targets != labels).all()
    assert ((0 <= targets) & (targets < 4)).all()


def test_least_similar_class_needs_two_classes():
    with pytest.raises(UgeError, match="at least two classes"):
        least_similar_class(torch.randn(3, 2), torch.randn(1, 2), torch.zeros(3, dtype=torch.long))


def test_feature_deviation_hand_computed():
    clean = torch.tensor([[2.0, 0.0]])  # F = (1, 0)
    protected = torch.tensor([[0.0, 5.0]])  # F' = (0, 1)
    true_class = torch.tensor([[3.0, 0.0]])  # F_t = (1, 0)
    target = torch.tensor([[-1.0, 0.0]])  # F'_t = (-1, 0)
    # l_feat = -||(1,-1)||^2 = -2; ||F' - F'_t||^2 = 2; ||F' - F_t||^2 = 2, hinge max(0, 2.5 - 2) = 0.5.
    loss = feature_deviation_loss(clean, protected, true_class, target, margin=2.5)
    assert loss.item() == pytest.approx(-2 + 2 + 0.5)
    # With a margin below the distance the hinge is off.
    assert feature_deviation_loss(clean, protected, true_class, target, margin=1.0).item() == pytest.approx(0.0)


def test_feature_deviation_averages_over_the_batch():
    clean = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    true_class = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    target = torch.tensor([[-1.0, 0.0], [-1.0, 0.0]])
    protected = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    # Sample 0 (F' = F): 0 + 4 + max(0, 2 - 0) = 6. Sample 1 (F' = F'_t): -4 + 0 + max(0, 2 - 4) = -4.
    loss = feature_deviation_loss(clean, protected, true_class, target, margin=2.0)
    assert loss.item() == pytest.approx((6 - 4) / 2)


def test_feature_term_decreases_as_protected_moves_away():
    clean = torch.tensor([[1.0, 0.0]])
    # Keep the triplet part constant: target and true class both orthogonal to the path, margin always satisfied.
    true_class = torch.tensor([[0.0, 0.0, 1.0]])
    target = torch.tensor([[0.0, 0.0, -1.0]])
    values = []
    for angle in torch.linspace(0, 3.0, 5):
        protected = torch.tensor([[torch.cos(angle), torch.sin(angle), 0.0]])
        values.append(feature_deviation_loss(F.pad(clean, (0, 1)), protected, true_class, target, 0.0).item())
    assert all(later < earlier for earlier, later in zip(values, values[1:]))


def test_feature_deviation_gradient_flows_to_protected_features():
    generator = torch.Generator().manual_seed(0)
    clean, true_class, target = (torch.randn(4, 8, generator=generator) for _ in range(3))
    protected = (clean + 0.01 * torch.randn(4, 8, generator=generator)).requires_grad_(True)
    feature_deviation_loss(clean, protected, true_class, target, margin=2.0).backward()
    assert protected.grad is not None
    assert torch.isfinite(protected.grad).all() and protected.grad.abs().sum() > 0


def test_undistill_equals_cross_entropy_for_equal_logits():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    loss = undistill_loss(logits, logits.clone(), labels, omega=0.7)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-6)


def test_undistill_decreases_as_the_kl_grows():
    authorized = torch.tensor([[3.0, 0.0, -1.0]])
    labels = torch.tensor([0])
    values = [
        undistill_loss(authorized, torch.tensor([[-scale, scale, 0.0]]), labels, omega=0.5).item()
        for scale in (0.0, 1.0, 2.0, 4.0)
    ]
    assert all(later < earlier for earlier, later in zip(values, values[1:]))


def test_undistill_matches_the_manual_formula_and_is_differentiable():
    generator = torch.Generator().manual_seed(3)
    authorized = torch.randn(6, 5, generator=generator).requires_grad_(True)
    hacker = torch.randn(6, 5, generator=generator).requires_grad_(True)
    labels = torch.randint(0, 5, (6,), generator=generator)
    p = authorized.softmax(-1)
    kl = (p * (p.log() - hacker.log_softmax(-1))).sum(-1).mean()
    manual = F.cross_entropy(authorized, labels) - 0.3 * kl
    loss = undistill_loss(authorized, hacker, labels, omega=0.3)
    assert loss.item() == pytest.approx(manual.item(), abs=1e-6)
    loss.backward()
    assert authorized.grad is not None and hacker.grad is not None
