"""The CLIP encoder on a tiny offline checkpoint, its load errors, and the surrogate encoder."""

from __future__ import annotations

import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoImageProcessor, CLIPModel

from uge_hf.encoders import CLIPEncoder, SurrogateEncoder, load_clip_encoder
from uge_hf.errors import UgeError

from .tiny_clip import IMAGE_SIZE, make_tiny_clip


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def encoder(clip_path: Path) -> CLIPEncoder:
    return load_clip_encoder(str(clip_path))


def test_clip_encoder_is_frozen_and_records_its_source(encoder, clip_path):
    assert all(not param.requires_grad for param in encoder.parameters())
    assert not encoder.training
    encoder.train()
    assert not encoder.training and not encoder.model.training, "a frozen encoder must stay in eval mode"
    assert encoder.name == str(clip_path)
    assert encoder.revision is None  # a local folder has no commit


def test_clip_encode_images_shape_and_gradient(encoder):
    images = torch.rand(3, 3, 32, 32, requires_grad=True)
    features = encoder.encode_images(images)
    assert features.shape == (3, encoder.model.config.projection_dim)
    features.pow(2).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_clip_encode_images_matches_the_processor_pipeline(encoder, clip_path):
    """At the crop size, the inline preprocessing must give what the checkpoint's own processor gives."""
    processor = AutoImageProcessor.from_pretrained(clip_path)
    model = CLIPModel.from_pretrained(clip_path).eval()
    pixels = torch.randint(0, 256, (2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    pixel_values = processor(images=[image.permute(1, 2, 0).numpy() for image in pixels], return_tensors="pt")[
        "pixel_values"
    ]
    with torch.no_grad():
        expected = model.get_image_features(pixel_values=pixel_values)
        expected = expected if isinstance(expected, torch.Tensor) else expected.pooler_output
        ours = encoder.encode_images(pixels.float() / 255)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


def test_clip_preprocessing_resizes_and_crops_like_the_processor(encoder, clip_path):
    """Other sizes go through resize + crop; the processor resizes 8-bit images, so agreement is to rounding."""
    processor = AutoImageProcessor.from_pretrained(clip_path)
    generator = torch.Generator().manual_seed(0)
    for height, width in [(48, 40), (24, 20)]:  # downsampling and upsampling, a crop along the long edge
        pixels = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8, generator=generator)
        expected = processor(images=[image.permute(1, 2, 0).numpy() for image in pixels], return_tensors="pt")
        expected = expected["pixel_values"]
        ours = encoder.preprocess(pixels.float() / 255)
        assert ours.shape == expected.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
        # One 8-bit step is 1/255 / std ~ 0.015 in normalised units. Noise is the hard case (PIL rounds to 8 bits
        # between its two resize passes, so a few overshooting pixels differ more); the mean is what must agree:
        # torch's plain bicubic kernel (a = -0.75) or a shifted crop are off by ten times this.
        assert (ours - expected).abs().mean() < 0.01


def test_clip_encode_classes(encoder):
    embeddings = encoder.encode_classes(["cat", "sea_lion", "truck"])
    assert embeddings.shape == (3, encoder.model.config.projection_dim)
    assert not embeddings.requires_grad
    # "sea_lion" is prompted as "sea lion": the underscore must not reach the tokenizer.
    torch.testing.assert_close(embeddings[1], encoder.encode_classes(["sea lion"])[0])


def test_missing_local_checkpoint_suggests_the_surrogate(tmp_path):
    with pytest.raises(UgeError, match="surrogate"):
        load_clip_encoder(str(tmp_path / "no-such-clip"))


def test_hub_checkpoint_offline_suggests_the_surrogate(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once at import: set the flag it actually consults too.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UgeError, match="surrogate") as caught:
        load_clip_encoder("uge-test/clip-that-is-not-cached")
    assert "uge-test/clip-that-is-not-cached" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_non_clip_checkpoint_is_refused(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(UgeError, match="not CLIP"):
        load_clip_encoder(str(tmp_path))


def test_cached_hub_checkpoint_records_its_commit(clip_path, tmp_path, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--uge-test--tiny-clip"
    shutil.copytree(clip_path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert load_clip_encoder("uge-test/tiny-clip").revision == commit


class TinyBackbone(nn.Module):
    """A classifier with the ``forward_features`` hook the surrogate needs, and BatchNorm to test eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Linear(6, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@pytest.fixture
def surrogate_data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "images": torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8, generator=generator),
        "labels": torch.arange(30) % 3,
        "mean": torch.tensor([0.5, 0.4, 0.3]),
        "std": torch.tensor([0.25, 0.2, 0.3]),
    }


def make_backbone(seed: int) -> TinyBackbone:
    torch.manual_seed(seed)
    backbone = TinyBackbone()
    # Non-trivial running statistics, so that a train-mode forward would give visibly different features.
    backbone.features[1].running_mean.uniform_(-0.5, 0.5)
    backbone.features[1].running_var.uniform_(0.5, 2.0)
    return backbone


def test_surrogate_fit_prototypes_and_centring(surrogate_data):
    data = surrogate_data
    encoder = SurrogateEncoder.fit(make_backbone(0), batch_size=7, **data)
    assert encoder.name == "surrogate" and encoder.revision is None
    assert all(not param.requires_grad for param in encoder.parameters())

    prototypes = encoder.encode_classes(["a", "b", "c"])
    assert prototypes.shape == (3, 6)
    features = encoder.encode_images(data["images"].float() / 255)
    assert features.mean(dim=0).abs().max() < 1e-5
    for label in range(3):
        torch.testing.assert_close(prototypes[label], features[data["labels"] == label].mean(dim=0))

    images = (data["images"][:4].float() / 255).requires_grad_(True)
    encoder.encode_images(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_surrogate_refuses_a_wrong_class_count_and_empty_classes(surrogate_data):
    data = surrogate_data
    encoder = SurrogateEncoder.fit(make_backbone(0), **data)
    with pytest.raises(UgeError, match="knows 3 classes, but 2 were asked for"):
        encoder.encode_classes(["a", "b"])
    with pytest.raises(UgeError, match="no rows"):
        SurrogateEncoder.fit(make_backbone(0), num_classes=4, **data)


def test_surrogate_state_dict_round_trip(surrogate_data, tmp_path):
    data = surrogate_data
    encoder = SurrogateEncoder.fit(make_backbone(0), **data)
    save_file(encoder.state_dict(), tmp_path / "surrogate.safetensors")

    restored = SurrogateEncoder.from_state_dict(make_backbone(1), load_file(tmp_path / "surrogate.safetensors"))
    images = torch.rand(5, 3, 8, 8)
    assert torch.equal(restored.encode_images(images), encoder.encode_images(images))
    assert torch.equal(restored.encode_classes(["a", "b", "c"]), encoder.encode_classes(["a", "b", "c"]))
