"""The "Protect an image" tab: the shipped generator (or the public demo key) applied to one uploaded image.

`protect_handler` returns the values of the tab's outputs; a user mistake is a message, never a crash.
"""

from __future__ import annotations

import json
import re
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import pixel_bound
from ..errors import UgeError
from .common import warn

MAX_SIDE = 1024  # a longer side is downscaled (Lanczos) to this, with a note on the page
MAX_PIXELS = 40_000_000  # larger uploads are refused before decoding (a 40 MP PNG is already ~100 MB)
MIN_SIDE = 8  # G's reflection padding at 1/4 resolution needs 8 pixels per side
MIN_RHO = 1 / 255  # below one 8-bit level the protected image could not differ
RHO_STEP = 0.001
DISPLAY_SIDE = 256  # small images are shown enlarged (nearest neighbour) to about this size


# --------------------------------------------------------------------------------------------------------------
# The shipped generator


@dataclass(frozen=True)
class DemoAssets:
    """The generator the demo runs (and what it was trained on), plus the sample images."""

    folder: Path
    generator: torch.nn.Module
    rho: float  # the rho G was trained at: its output is bounded by rho * tanh
    info: dict  # spaces/generator/config.json (or a release's uge_config.json)
    samples: tuple[Path, ...]

    @property
    def weights_bytes(self) -> int:
        return self.info.get("_weights_bytes", 0)


def default_assets_dir() -> Path:
    """`$UGE_HF_DEMO_ASSETS`, else the checkout's `spaces/` folder (beside the `uge_hf` package)."""
    env = os.environ.get("UGE_HF_DEMO_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "spaces"


def load_assets(folder: str | os.PathLike | None = None) -> DemoAssets:
    """The generator in `folder/generator/` (the demo's layout) or in `folder` itself (a release made with
    `release_generator=True`: `generator.safetensors` + `uge_config.json`), and the PNGs in `folder/samples/`."""
    return _load_assets(Path(folder or default_assets_dir()).expanduser().resolve())


@lru_cache(maxsize=4)
def _load_assets(folder: Path) -> DemoAssets:
    from safetensors.torch import load_file

    from ..config import ProtectConfig
    from ..solver import build_generator

    for candidate in (folder / "generator", folder):
        weights = candidate / "generator.safetensors"
        config_path = next((p for p in (candidate / "config.json", candidate / "uge_config.json") if p.is_file()), None)
        if weights.is_file() and config_path is not None:
            break
    else:
        raise UgeError(
            f"no demo generator in {folder} (expected generator/generator.safetensors + generator/config.json): "
            "run spaces/train_demo_generator.py, or pass the folder of a release made with release_generator=True"
        )
    info = json.loads(config_path.read_text())
    config = ProtectConfig(
        rho=info["rho"], seed=info.get("seed", 0),
        generator_channels=info["generator_channels"], generator_blocks=info["generator_blocks"],
    )  # fmt: skip
    generator = build_generator(config)
    try:
        generator.load_state_dict(load_file(str(weights)))
    except (RuntimeError, OSError) as error:
        raise UgeError(f"{weights} does not match the generator its config describes: {error}") from None
    generator.eval().requires_grad_(False)
    info = {**info, "_weights_bytes": weights.stat().st_size}
    samples = tuple(sorted((folder / "samples").glob("*.png")))
    return DemoAssets(folder, generator, float(info["rho"]), info, samples)


# --------------------------------------------------------------------------------------------------------------
# Protect an image


DEMO_KEY = "demo-key.json"  # a public key for the page (it authorizes nothing of value), the default key settings
DEMO_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEMO_METHODS = ("keyed", "gradient-matching")


@dataclass
class Protection:
    """One protected upload: uint8 H x W x 3 arrays, the figures, and the lossless PNG to download."""

    original: np.ndarray  # what G saw: the upload as RGB (downscaled if it was huge)
    protected: np.ndarray
    rho: float
    pixel_bound: int  # floor(rho * 255): |protected - original| <= this, in 8-bit levels, for every pixel
    metrics: dict[str, float]
    png_path: Path
    notes: list[str] = field(default_factory=list)
    method: str = "gradient-matching"

    @property
    def noise(self) -> np.ndarray:
        """protected - original, scaled so that +-bound is white/black and zero is mid-grey."""
        diff = self.protected.astype(np.float32) - self.original.astype(np.float32)
        return np.clip(np.round(diff / self.pixel_bound * 127.5 + 127.5), 0, 255).astype(np.uint8)


def load_upload(image: Any) -> tuple[np.ndarray, list[str]]:
    """An upload (path, PIL image or H x W x C array) as a uint8 H x W x 3 array, and notes on what was changed.

    Raises UgeError for an empty input, a file that is not an image, or one too big or too small.
    """
    notes: list[str] = []
    if image is None or (isinstance(image, str) and not image.strip()):
        raise UgeError("no image: upload one or pick a sample first")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise UgeError(f"no file at {path}")
        try:
            opened = Image.open(path)
        except Image.DecompressionBombError:
            raise UgeError(f"{path.name} is too large to decode safely (over {MAX_PIXELS:,} pixels)") from None
        except Exception:  # UnidentifiedImageError, truncated headers, ...
            raise UgeError(f"{path.name} is not an image this demo can read (PNG, JPEG, WebP, BMP, TIFF, GIF ...)") from None
        image = opened
    if not isinstance(image, Image.Image):
        raise UgeError(f"expected an image, got {type(image).__name__}")
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise UgeError(f"the image is {width}x{height} ({width * height:,} pixels): over the {MAX_PIXELS:,} pixels this demo accepts")
    if min(width, height) < MIN_SIDE:
        raise UgeError(f"the image is {width}x{height}: the generator needs at least {MIN_SIDE} pixels per side")
    if getattr(image, "n_frames", 1) > 1:
        notes.append("an animated image: only its first frame is protected")
    try:
        image.load()
        if image.mode != "RGB":
            notes.append(f"converted from {image.mode} to RGB (alpha dropped), as uge-hf does for datasets")
            from ..data import to_rgb  # 16-bit and float images by their range, as for datasets

            image = to_rgb(image)
    except Exception as error:
        raise UgeError(f"the image could not be decoded: {error}") from None
    if max(width, height) > MAX_SIDE:
        scale = MAX_SIDE / max(width, height)
        size = (max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
        notes.append(
            f"downscaled from {width}x{height} to {size[0]}x{size[1]} (this demo protects at most {MAX_SIDE} px "
            "per side); the bound holds against the downscaled image, which is what you download"
        )
    return np.asarray(image, dtype=np.uint8).copy(), notes


def check_rho(rho: Any, trained_rho: float) -> float:
    """rho as a float in [1/255, trained_rho], or UgeError saying why not."""
    try:
        value = float(rho)
    except (TypeError, ValueError):
        raise UgeError(f"rho must be a number, got {rho!r}") from None
    if not math.isfinite(value) or value < MIN_RHO - 1e-9:
        raise UgeError(f"rho must be at least 1/255 = {MIN_RHO:.4f} (one 8-bit level), got {value}")
    if value > trained_rho + 1e-9:
        raise UgeError(
            f"rho must be at most {trained_rho}: the generator was trained at rho = {trained_rho} and its output is "
            f"bounded by {trained_rho} * tanh, so a larger rho would change nothing"
        )
    return value


def ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004) of two uint8 H x W x C images: gaussian window (11, sigma 1.5), K1 = 0.01,
    K2 = 0.03, L = 255, over valid windows, per channel, averaged. Images smaller than the window use a window
    as large as the smaller side (odd)."""
    x = torch.from_numpy(np.ascontiguousarray(a)).double().permute(2, 0, 1).unsqueeze(1)  # C x 1 x H x W
    y = torch.from_numpy(np.ascontiguousarray(b)).double().permute(2, 0, 1).unsqueeze(1)
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable gaussian, valid windows only
        return F.conv2d(F.conv2d(t, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean().item()


def protect_image(image: Any, rho: Any, assets: DemoAssets | None = None, name: str | None = None,
                  method: str = "gradient-matching", label: str = DEMO_CLASSES[0]) -> Protection:
    """Protect one upload at `rho`: every pixel ends within floor(rho * 255) levels of the upload.

    `method` "gradient-matching": the demo's generator (clamped to +-rho after generating, then quantised);
    "keyed": the keyed method with the page's public demo key, as an image of class `label`. Raises UgeError for
    bad input.
    """
    from ..apply import perturbation_stats, protect_images

    assets = assets or load_assets()
    if method not in DEMO_METHODS:
        raise UgeError(f"unknown method {method!r}: the demo runs {', '.join(DEMO_METHODS)}")
    rho = check_rho(rho, assets.rho)
    original, notes = load_upload(image)
    bound = pixel_bound(rho)
    source = torch.from_numpy(original).permute(2, 0, 1).unsqueeze(0).contiguous()
    if method == "keyed":
        from ..key import protect_keyed
        from ..key import load_secret_key

        if label not in DEMO_CLASSES:
            raise UgeError(f"unknown class {label!r}: the demo key has {', '.join(DEMO_CLASSES)}")
        keyed = protect_keyed(source, torch.tensor([DEMO_CLASSES.index(label)]), load_secret_key(assets.folder / DEMO_KEY), bound)
        protected = keyed.images
        notes.append(f"keyed: invariance residual |K(x_u) - K(T(x))| = {keyed.invariance_levels.max().item():.1e} levels")
    else:
        protected = protect_images(assets.generator, source, rho, bound, "cpu")
    protected_array = protected[0].permute(1, 2, 0).contiguous().numpy()
    metrics = perturbation_stats(source, protected)
    metrics["ssim"] = round(ssim(original, protected_array), 4)
    if name is None and isinstance(image, (str, os.PathLike)):
        name = Path(image).stem
    stem = re.sub(r"[^\w.-]+", "_", name or "image")[:80] or "image"
    png_path = Path(tempfile.mkdtemp(dir=_output_dir())) / f"{stem}-protected.png"
    Image.fromarray(protected_array, "RGB").save(png_path, format="PNG")  # lossless: what you see is what you get
    return Protection(original, protected_array, rho, bound, metrics, png_path, notes, method)


def _output_dir(keep_seconds: float = 3600) -> Path:
    """This process's folder of protected PNGs (one subfolder per request); those older than an hour are removed."""
    folder = Path(tempfile.gettempdir()) / f"uge-demo-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    now = time.time()
    for old in folder.iterdir():
        if now - old.stat().st_mtime > keep_seconds:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def _enlarged(array: np.ndarray) -> np.ndarray:
    """Small images enlarged by an integer factor (nearest neighbour) so their pixels can be seen."""
    factor = max(1, DISPLAY_SIDE // max(array.shape[:2]))
    return array.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else array


def metrics_markdown(result: Protection) -> str:
    m = result.metrics
    factor = max(1, DISPLAY_SIDE // max(result.original.shape[:2]))
    lines = [
        "| figure | value |",
        "|---|---|",
        f"| L-inf (8-bit levels) | **{m['linf_levels']:.0f}** (bound floor({result.rho:g} x 255) = {result.pixel_bound}) |",
        f"| mean abs diff (levels) | {m['mean_abs_levels']} |",
        f"| PSNR | {m['psnr_db']} dB |",
        f"| SSIM | {m['ssim']} |",
        f"| size | {result.original.shape[1]}x{result.original.shape[0]} px |",
        f"| method | {result.method} |",
    ]
    notes = list(result.notes)
    if factor > 1:
        notes.append(f"the three images are shown enlarged x{factor} (nearest neighbour); the download is full size")
    return "\n".join(lines) + "".join(f"\n\n*Note: {note}.*" for note in notes)


ProtectOutputs = tuple  # (original, noise, protected, metrics markdown, png path, message)


def protect_handler(image: Any, rho: Any, assets_dir: str | os.PathLike | None = None,
                    method: str = "gradient-matching", label: str = DEMO_CLASSES[0]) -> ProtectOutputs:
    """The "Protect" button: the six outputs of the tab; a bad input gives empty images and a message."""
    try:
        result = protect_image(image, rho, load_assets(assets_dir), method=method, label=label)
    except UgeError as error:
        warn(str(error))
        return None, None, None, "", None, f"Could not protect: {error}"
    except Exception as error:  # a bug must still not take the page down
        warn(f"unexpected error: {error}")
        return None, None, None, "", None, f"Unexpected error ({type(error).__name__}): {error}"
    message = "Protected." + "".join(f" Note: {note}." for note in result.notes)
    return (
        _enlarged(result.original), _enlarged(result.noise), _enlarged(result.protected),
        metrics_markdown(result), str(result.png_path), message,
    )  # fmt: skip
