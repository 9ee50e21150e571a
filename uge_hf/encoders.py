"""Frozen encoders for L_fd: image features and class embeddings in one shared space.

The paper uses CLIP (image tower for x and x_u, text tower on "A photo of a <class>" prompts). When no CLIP
checkpoint can be had, ``SurrogateEncoder`` stands in: a classifier backbone trained on the clean data, whose class
prototypes play the role of the text embeddings. Both take images in [0, 1] and do their own preprocessing inside,
differentiably, so the generator's gradient flows through them.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uge_hf.errors import UgeError


class Encoder(nn.Module):
    """Frozen image/text encoder for L_fd. Subclasses set ``name`` and ``revision``.

    The module stays in eval mode even if a caller switches it to train mode (e.g. through a parent module): a
    frozen encoder whose BatchNorm or dropout changed behaviour would silently move the feature space.
    """

    name: str
    revision: str | None

    def train(self, mode: bool = True) -> Encoder:
        return super().train(False)

    def encode_images(self, images: Tensor) -> Tensor:
        """B x 3 x H x W images in [0, 1], any size -> B x D raw (unnormalised) features, differentiable."""
        raise NotImplementedError

    def encode_classes(self, class_names: list[str]) -> Tensor:
        """K x D class embeddings, in the order of ``class_names``."""
        raise NotImplementedError


def _pooled(output: Any) -> Tensor:
    """The projected features of ``get_*_features``: a tensor in transformers 4.x, an output object in 5.x."""
    return output if isinstance(output, Tensor) else output.pooler_output


class CLIPEncoder(Encoder):
    """A frozen ``transformers.CLIPModel`` with CLIP's image preprocessing redone in torch.

    The preprocessing follows the checkpoint's image processor (resize, center crop, normalise) but runs on tensors,
    so x_u keeps its gradient; the processor itself works on PIL/numpy images and would cut it.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, image_processor: Any, name: str, revision: str | None):
        super().__init__()
        self.model = model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.revision = revision

        self.resize_to = _resize_spec(image_processor) if image_processor.do_resize else None
        crop = image_processor.crop_size
        self.crop_to = (int(crop.get("height")), int(crop.get("width"))) if image_processor.do_center_crop else None
        mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)
        self.eval()

    def preprocess(self, images: Tensor) -> Tensor:
        """Images in [0, 1] -> the model's ``pixel_values``, as the checkpoint's image processor would make them."""
        height, width = images.shape[-2:]
        if self.resize_to is not None:
            size = _resized_shape(height, width, self.resize_to)
            if size != (height, width):
                # antialias=True also when upsampling: torch then uses PIL's bicubic kernel (a = -0.5), which is what
                # the processor applies; plain bicubic uses a = -0.75.
                images = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)
                # The processor resizes 8-bit images, which clips the bicubic overshoot.
                images = images.clamp(0, 1)
        if self.crop_to is not None:
            images = _center_crop(images, self.crop_to)
        return (images - self.pixel_mean) / self.pixel_std

    def encode_images(self, images: Tensor) -> Tensor:
        pixel_values = self.preprocess(images.to(self.pixel_mean.device, torch.float32))
        pixel_values = pixel_values.to(self.model.dtype)
        return _pooled(self.model.get_image_features(pixel_values=pixel_values)).float()

    @torch.no_grad()
    def encode_classes(self, class_names: list[str]) -> Tensor:
        prompts = [f"A photo of a {name.replace('_', ' ')}." for name in class_names]
        tokens = self.tokenizer(
            prompts,
            padding=True,
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
            return_tensors="pt",
        ).to(self.pixel_mean.device)
        return _pooled(self.model.get_text_features(**tokens)).float()


def _resize_spec(image_processor: Any) -> int | tuple[int, int]:
    """The processor's resize target: a shortest edge (int) or an exact (height, width)."""
    size = image_processor.size
    if size.get("shortest_edge"):
        return int(size.get("shortest_edge"))
    if size.get("height") and size.get("width"):
        return int(size.get("height")), int(size.get("width"))
    raise UgeError(f"unsupported CLIP image processor size {dict(size)}: expected shortest_edge or height and width")


def _resized_shape(height: int, width: int, spec: int | tuple[int, int]) -> tuple[int, int]:
    """Output size of the processor's resize, with its own rounding (the long edge is truncated, not rounded)."""
    if isinstance(spec, tuple):
        return spec
    if height <= width:
        return spec, int(spec * width / height)
    return int(spec * height / width), spec


def _center_crop(images: Tensor, size: tuple[int, int]) -> Tensor:
    """Center crop with the processor's offsets (floor of half the excess); smaller images are zero-padded."""
    crop_h, crop_w = size
    pad_h, pad_w = max(crop_h - images.shape[-2], 0), max(crop_w - images.shape[-1], 0)
    if pad_h or pad_w:
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    top = (images.shape[-2] - crop_h) // 2
    left = (images.shape[-1] - crop_w) // 2
    return images[..., top : top + crop_h, left : left + crop_w]


def load_clip_encoder(name_or_path: str, revision: str | None = None) -> CLIPEncoder:
    """Load a CLIP checkpoint (Hub id or local ``save_pretrained`` folder) as a frozen ``CLIPEncoder``.

    Raises ``UgeError`` if the checkpoint cannot be obtained (offline, no such model, not a CLIP folder).
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel

    looks_like_path = os.path.isabs(name_or_path) or name_or_path.startswith(".")
    if looks_like_path and not os.path.isdir(name_or_path):
        # Without this, transformers reads the missing folder as a malformed Hub id and says so.
        raise UgeError(
            f"could not load the CLIP checkpoint {name_or_path!r}: no such folder; use `--encoder surrogate`, "
            "or a local CLIP folder saved with save_pretrained"
        )
    try:
        config = AutoConfig.from_pretrained(name_or_path, revision=revision)
        if config.model_type != "clip":
            # CLIPModel would load such a checkpoint with random weights and only a warning.
            raise UgeError(
                f"{name_or_path!r} is a {config.model_type!r} checkpoint, not CLIP; use `--encoder surrogate`, "
                "or a CLIP checkpoint"
            )
        loaded_revision = _loaded_revision(name_or_path, revision, config)
        # Pin the other files to the commit the config came from, so all three match.
        model = CLIPModel.from_pretrained(name_or_path, config=config, revision=loaded_revision)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=loaded_revision)
        image_processor = AutoImageProcessor.from_pretrained(name_or_path, revision=loaded_revision)
    except (OSError, ValueError) as error:  # huggingface_hub's HTTP, offline and validation errors subclass these
        raise UgeError(
            f"could not load the CLIP checkpoint {name_or_path!r} (offline, or no such model?): "
            f"{_first_line(error)}; use `--encoder surrogate`, or a local CLIP folder saved with save_pretrained"
        ) from error
    return CLIPEncoder(model, tokenizer, image_processor, name_or_path, loaded_revision)


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0].rstrip(".") if lines else type(error).__name__


def _loaded_revision(name_or_path: str, revision: str | None, config: Any) -> str | None:
    """The commit actually loaded when it can be known, else the requested revision (None for a local folder)."""
    if os.path.isdir(name_or_path):
        return revision
    # transformers 4.x records the commit on the config; 5.x dropped the attribute, but the file it loaded sits in
    # the cache under snapshots/<commit>/.
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return commit
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
    if isinstance(cached, str):
        return os.path.basename(os.path.dirname(cached))
    return revision


class SurrogateEncoder(Encoder):
    """A classifier backbone trained on the clean data, standing in for CLIP.

    Features are ``backbone.forward_features`` of the normalised images, centred by the clean data's feature mean:
    uncentred features of such a backbone all point roughly the same way (a prototype measured cosines >= 0.85
    between every pair of class means), which would make the least-similar-class target meaningless. The "class
    embeddings" are the per-class means of the centred clean features (class prototypes).
    """

    name = "surrogate"
    revision = None

    def __init__(self, backbone: nn.Module, mean: Tensor, std: Tensor, feature_mean: Tensor, prototypes: Tensor):
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.register_buffer("input_mean", mean.detach().float().reshape(1, -1, 1, 1).clone())
        self.register_buffer("input_std", std.detach().float().reshape(1, -1, 1, 1).clone())
        self.register_buffer("feature_mean", feature_mean.detach().float().clone())
        self.register_buffer("prototypes", prototypes.detach().float().clone())
        self.eval()

    def encode_images(self, images: Tensor) -> Tensor:
        return self._uncentred_features(images) - self.feature_mean

    def _uncentred_features(self, images: Tensor) -> Tensor:
        images = images.to(self.input_mean.device, torch.float32)
        return self.backbone.forward_features((images - self.input_mean) / self.input_std)

    def encode_classes(self, class_names: list[str]) -> Tensor:
        if len(class_names) != self.prototypes.shape[0]:
            raise UgeError(
                f"the surrogate encoder knows {self.prototypes.shape[0]} classes, but {len(class_names)} were asked for"
            )
        return self.prototypes.clone()

    @classmethod
    def fit(
        cls,
        backbone: nn.Module,
        images: Tensor,
        labels: Tensor,
        mean: Tensor,
        std: Tensor,
        batch_size: int = 256,
        num_classes: int | None = None,
    ) -> SurrogateEncoder:
        """Compute the feature mean and class prototypes of a trained ``backbone`` on the clean data.

        ``images`` are uint8 N x 3 x H x W, ``labels`` N class indices, ``mean``/``std`` the per-channel input
        normalisation the backbone was trained with. ``num_classes`` defaults to ``labels.max() + 1``; every class
        needs at least one row. The backbone is frozen in place and owned by the returned encoder.
        """
        num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            low, high = int(labels.min()), int(labels.max())
            raise UgeError(f"surrogate labels must lie in [0, {num_classes}), got {low}..{high}")
        counts = torch.bincount(labels.long().cpu(), minlength=num_classes)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            raise UgeError(f"cannot build surrogate class prototypes: no rows for class(es) {empty}")

        device = next(backbone.parameters()).device
        # The statistics are filled in below, once the features they summarise are known.
        encoder = cls(backbone, mean, std, feature_mean=torch.zeros(0), prototypes=torch.zeros(0)).to(device)
        with torch.no_grad():
            features = torch.cat(
                [
                    encoder._uncentred_features(images[start : start + batch_size].to(device).float() / 255)
                    for start in range(0, len(images), batch_size)
                ]
            ).float()
        feature_mean = features.mean(dim=0)
        sums = torch.zeros(num_classes, features.shape[1], device=device).index_add_(
            0, labels.to(device).long(), features - feature_mean
        )
        encoder.feature_mean = feature_mean
        encoder.prototypes = sums / counts.to(device).unsqueeze(1)
        return encoder

    @classmethod
    def from_state_dict(cls, backbone: nn.Module, state: dict[str, Tensor]) -> SurrogateEncoder:
        """Rebuild an encoder saved with ``state_dict()`` (e.g. through safetensors) around a same-shaped backbone."""
        encoder = cls(backbone, state["input_mean"], state["input_std"], state["feature_mean"], state["prototypes"])
        encoder.load_state_dict(state)
        return encoder
