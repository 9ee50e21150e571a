"""Classifier zoo and perturbation generator: shapes, size independence, bounds and batch independence."""

import pytest
import torch

from uge_hf.models import ARCHITECTURES, PerturbationGenerator

TINY_WIDTH = {"resnet18": 4, "cnn": 4, "lenet": 3, "mobilenetv2": 8, "shufflenetv2": 8}


def _tiny(arch: str, num_classes: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return ARCHITECTURES[arch][0](num_classes, TINY_WIDTH[arch])


def _param_shapes(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {name: p.shape for name, p in model.named_parameters()}


def test_tiny_widths_cover_every_architecture() -> None:
    assert TINY_WIDTH.keys() == ARCHITECTURES.keys()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("num_classes", [2, 10])
@pytest.mark.parametrize("size", [(32, 32), (20, 24), (16, 16)])
def test_classifier_shapes(arch: str, num_classes: int, size: tuple[int, int]) -> None:
    model = _tiny(arch, num_classes)
    x = torch.randn(2, 3, *size)
    features = model.forward_features(x)
    assert features.ndim == 2 and features.shape[0] == 2
    assert model.head.in_features == features.shape[1]
    assert model(x).shape == (2, num_classes)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_forward_is_head_of_features(arch: str) -> None:
    model = _tiny(arch, 4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.forward_features(x)))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_parameters_do_not_depend_on_image_size(arch: str) -> None:
    model = _tiny(arch, 10)
    shapes = _param_shapes(model)
    for size in [(16, 16), (32, 32), (48, 40)]:
        model(torch.randn(2, 3, *size))
        assert _param_shapes(model) == shapes


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_width_changes_parameter_count(arch: str) -> None:
    cls, _ = ARCHITECTURES[arch]
    narrow, wide = cls(10, TINY_WIDTH[arch]), cls(10, 2 * TINY_WIDTH[arch])
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_classifier_trains(arch: str) -> None:
    model = _tiny(arch, 3)
    model(torch.randn(4, 3, 16, 16)).logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


RHO = 8 / 255


def _generator() -> PerturbationGenerator:
    torch.manual_seed(0)
    return PerturbationGenerator(RHO, base_channels=8, num_res_blocks=2)


@pytest.mark.parametrize("size", [(32, 32), (33, 31), (8, 8)])
def test_generator_shape_and_bound(size: tuple[int, int]) -> None:
    generator = _generator()
    x = torch.rand(3, 3, *size)
    delta = generator(x)
    assert delta.shape == x.shape
    assert delta.abs().max() <= RHO
    assert delta.abs().max() > 0, "the output conv starts small, not at zero"


def test_generator_bound_holds_when_saturated() -> None:
    generator = _generator()
    with torch.no_grad():
        generator.out[1].weight.mul_(1e4)
    delta = generator(torch.rand(2, 3, 32, 32))
    assert delta.abs().max() <= RHO
    assert delta.abs().max() > 0.9 * RHO


@pytest.mark.parametrize("train", [True, False])
def test_generator_is_independent_of_batch(train: bool) -> None:
    generator = _generator().train(train)
    batch = torch.rand(5, 3, 33, 31)
    batch[1:] *= 0.2  # very different companions, so BatchNorm-like coupling would show
    with torch.no_grad():
        alone = generator(batch[:1])
        together = generator(batch)
    torch.testing.assert_close(alone, together[:1], rtol=1e-5, atol=1e-7)


def test_generator_gradients_reach_all_parameters() -> None:
    generator = _generator()
    x = torch.rand(2, 3, 32, 32)
    (generator(x) * torch.randn_like(x)).sum().backward()
    for name, p in generator.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
