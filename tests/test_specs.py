"""Model specs: parsing, and seeded, pure, fingerprinted model construction."""

import hashlib
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load, save

from uge_hf.errors import UgeError
from uge_hf.models import ARCHITECTURES
from uge_hf.specs import ModelSpec, build_model, init_sha256, init_state_bytes

SMALL = "resnet18-w4-seed0"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("resnet18-seed0", ModelSpec("resnet18", 0)),
        ("resnet18-w16-seed0", ModelSpec("resnet18", 0, 16)),
        ("cnn-seed3", ModelSpec("cnn", 3)),
        ("ResNet18-W16-Seed7", ModelSpec("resnet18", 7, 16)),
        ("  lenet-w6-seed12 ", ModelSpec("lenet", 12, 6)),
        ("mobilenetv2-seed1", ModelSpec("mobilenetv2", 1)),
        ("shufflenetv2-w8-seed2", ModelSpec("shufflenetv2", 2, 8)),
    ],
)
def test_parse_valid(text: str, expected: ModelSpec) -> None:
    spec = ModelSpec.parse(text)
    assert spec == expected
    assert ModelSpec.parse(str(spec)) == spec


def test_canonical_form() -> None:
    assert str(ModelSpec("resnet18", 0)) == "resnet18-seed0"
    assert str(ModelSpec("resnet18", 0, 64)) == "resnet18-w64-seed0"
    assert str(ModelSpec.parse("CNN-seed007")) == "cnn-seed7"


def test_resolved_width() -> None:
    for arch, (_, default) in ARCHITECTURES.items():
        assert ModelSpec(arch, 0).resolved_width == default
        assert ModelSpec(arch, 0, 5).resolved_width == 5


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("vgg16-seed0", "unknown architecture 'vgg16'"),
        ("resnet18", "invalid model spec"),
        ("resnet18-w16", "invalid model spec"),
        ("resnet18-seed-1", "invalid model spec"),
        ("resnet18-w-2-seed0", "invalid model spec"),
        ("resnet18-w0-seed0", "width must be a positive integer"),
        ("resnet18-seedx", "invalid model spec"),
        ("", "invalid model spec"),
        ("!!garbage!!", "invalid model spec"),
        (f"cnn-seed{2**64}", "seed must be between"),
    ],
)
def test_parse_invalid(text: str, fragment: str) -> None:
    with pytest.raises(UgeError, match="resnet18-seed0") as info:
        ModelSpec.parse(text)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    if "architecture" in fragment or "invalid" in fragment:
        assert all(arch in message for arch in ARCHITECTURES)


def test_constructor_validates() -> None:
    with pytest.raises(UgeError, match="unknown architecture"):
        ModelSpec("ResNet18", 0)  # parse normalises case, the constructor does not
    with pytest.raises(UgeError, match="seed"):
        ModelSpec("cnn", -1)


def test_build_model_rejects_too_few_classes() -> None:
    with pytest.raises(UgeError, match="at least 2 classes"):
        build_model(SMALL, 1)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_build_model_is_deterministic_and_pure() -> None:
    torch.manual_seed(123)
    first = _state(build_model(SMALL, 10))
    torch.rand(1000)  # move the caller's RNG somewhere else entirely
    torch.manual_seed(999)
    torch.randn(17)
    before = torch.get_rng_state()
    second = build_model(ModelSpec.parse(SMALL), 10)
    assert torch.equal(torch.get_rng_state(), before), "build_model must not touch the caller's RNG"
    assert first.keys() == second.state_dict().keys()
    assert all(torch.equal(first[k], v) for k, v in second.state_dict().items())
    assert init_sha256(SMALL, 10) == init_sha256(ModelSpec("resnet18", 0, 4), 10)


def test_build_model_ignores_default_dtype() -> None:
    expected = init_sha256("lenet-seed0", 10)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert init_sha256("lenet-seed0", 10) == expected
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(previous)


def test_build_model_returns_cpu_train_mode() -> None:
    model = build_model(SMALL, 3)
    assert model.training
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())


def test_hash_depends_on_seed_width_classes_and_arch() -> None:
    hashes = {
        init_sha256("resnet18-w4-seed0", 10),
        init_sha256("resnet18-w4-seed1", 10),
        init_sha256("resnet18-w8-seed0", 10),
        init_sha256("resnet18-w4-seed0", 5),
        init_sha256("cnn-w4-seed0", 10),
    }
    assert len(hashes) == 5


def test_hash_round_trips_through_safetensors() -> None:
    data = init_state_bytes(build_model(SMALL, 10))
    digest = init_sha256(SMALL, 10)
    assert hashlib.sha256(data).hexdigest() == digest
    assert hashlib.sha256(save(load(data))).hexdigest() == digest


def test_hash_is_stable_across_processes() -> None:
    code = f"from uge_hf.specs import init_sha256; print(init_sha256({SMALL!r}, 10))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == init_sha256(SMALL, 10)
