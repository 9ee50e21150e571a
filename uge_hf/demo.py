"""The browser demo (`uge-hf demo`, and the Hugging Face Space in `spaces/`): see and try the protection.

Two tabs. **Protect an image** runs a small generator, trained on the embedded CIFAR-10 sample and shipped with
the demo, on an uploaded image and shows original / amplified noise / protected with L-inf, PSNR and SSIM, and a
lossless PNG to download. **Inspect a release** reads a release folder (or Hub dataset) and shows its card
summary, preview, measured results and whether its checks pass.

The handlers (`protect_handler`, `inspect_handler`) are plain functions returning the values of the page's
outputs, so they are tested without a browser; a user mistake becomes a message on the page, never a crash.
gradio is an optional dependency (`pip install uge-hf[demo]`), imported only by `build_app` / `launch`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import pixel_bound
from .errors import UgeError

if TYPE_CHECKING:
    from .card import UgeBlock

MAX_SIDE = 1024  # a longer side is downscaled (Lanczos) to this, with a note on the page
MAX_PIXELS = 40_000_000  # larger uploads are refused before decoding (a 40 MP PNG is already ~100 MB)
MIN_SIDE = 8  # G's reflection padding at 1/4 resolution needs 8 pixels per side
MIN_RHO = 1 / 255  # below one 8-bit level the protected image could not differ
RHO_STEP = 0.001
DISPLAY_SIDE = 256  # small images are shown enlarged (nearest neighbour) to about this size
MAX_UPLOAD = "50mb"  # gradio refuses bigger uploads in the browser, with its own message
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # the demo asks for user/name (fetch.HUB_ID also takes a bare name)
RELEASE_FILES = ["README.md", "preview.png", "uge_config.json", "authorized/*"]  # what Inspect downloads


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
    return Path(env) if env else Path(__file__).resolve().parent.parent / "spaces"


def load_assets(folder: str | os.PathLike | None = None) -> DemoAssets:
    """The generator in `folder/generator/` (the demo's layout) or in `folder` itself (a release made with
    `release_generator=True`: `generator.safetensors` + `uge_config.json`), and the PNGs in `folder/samples/`."""
    return _load_assets(Path(folder or default_assets_dir()).expanduser().resolve())


@lru_cache(maxsize=4)
def _load_assets(folder: Path) -> DemoAssets:
    from safetensors.torch import load_file

    from .config import ProtectConfig
    from .solver import build_generator

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
            from .data import to_rgb  # 16-bit and float images by their range, as for datasets

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
    from .apply import perturbation_stats, protect_images

    assets = assets or load_assets()
    if method not in DEMO_METHODS:
        raise UgeError(f"unknown method {method!r}: the demo runs {', '.join(DEMO_METHODS)}")
    rho = check_rho(rho, assets.rho)
    original, notes = load_upload(image)
    bound = pixel_bound(rho)
    source = torch.from_numpy(original).permute(2, 0, 1).unsqueeze(0).contiguous()
    if method == "keyed":
        from .key import protect_keyed
        from .key import load_secret_key

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
        _warn(str(error))
        return None, None, None, "", None, f"Could not protect: {error}"
    except Exception as error:  # a bug must still not take the page down
        _warn(f"unexpected error: {error}")
        return None, None, None, "", None, f"Unexpected error ({type(error).__name__}): {error}"
    message = "Protected." + "".join(f" Note: {note}." for note in result.notes)
    return (
        _enlarged(result.original), _enlarged(result.noise), _enlarged(result.protected),
        metrics_markdown(result), str(result.png_path), message,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Inspect a release


@dataclass
class Inspection:
    """What the Inspect tab shows about one release."""

    ref: str  # as given: a folder or a Hub id
    folder: Path  # the local folder (a partial snapshot for a Hub id)
    card: UgeBlock
    checks: list[tuple[str, bool, str]]  # card-based: (what, passed, detail)
    verify_ok: bool | None  # verify_release's verdict; None where it was not run
    verify: str  # markdown: verify_release's checks, or why it was not run

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks) and self.verify_ok is not False


def resolve_release(ref: Any) -> Path:
    """A local release folder, or a partial download (card, preview, weights) of a Hub dataset."""
    text = str(ref or "").strip()
    if not text:
        raise UgeError("no release given: type a local folder or a Hub dataset id (user/name)")
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UgeError(f"{text} is a file, not a release folder")
    if not HUB_ID.fullmatch(text):
        raise UgeError(f"no folder at {text}, and it is not a Hub dataset id (user/name)")
    from .fetch import fetch_release

    return fetch_release(text, allow_patterns=RELEASE_FILES)


def card_checks(folder: Path, card: UgeBlock) -> list[tuple[str, bool, str]]:
    """Checks the card allows without the data: each public authorized file against the card's sha256 and the spec
    rebuilt here (`uge_hf.authorized.weight_problems`); private weights (keyed) are not in a release, and no key
    material may be."""
    from .authorized import read_weights, weight_problems
    from .verify import key_material

    checks = []
    for net in card.authorized:
        spec = net.spec
        if net.private:
            checks.append((f"{spec}: weights are private", True,
                           f"not in the release; the card's sha256 {net.init_sha256[:16]}... checks a copy"))
            continue
        try:
            problems = weight_problems(net, read_weights(folder, net))
        except Exception as error:
            checks.append((f"{spec}: weights file", False, str(error)))
            continue
        checks.append((f"{spec}: weights == card's init_sha256 == spec rebuilt here", not problems, "; ".join(problems) or "match"))
    if not checks:
        checks.append(("authorized networks listed in the card", False, "none"))
    found = key_material(folder)
    checks.append(("no key material in the release", not found, ", ".join(found) or "none found"))
    return checks


def run_verify(ref: str, folder: Path) -> tuple[bool | None, str]:
    """`uge_hf.verify.verify_release` (card, weights, shards, every image), as (passed, markdown).

    (None, a note) where this uge-hf has no `verify` module: the card-based checks are then all there is.
    """
    if importlib.util.find_spec(f"{__package__}.verify") is None:
        return None, "`uge_hf.verify` is not in this version of uge-hf: only the card-based checks above were run."
    from .verify import verify_release  # optional module, written separately

    target = str(folder) if Path(ref).expanduser().is_dir() else ref  # a Hub id: verify downloads the shards too
    try:
        checks = list(verify_release(target))
    except UgeError as error:
        return False, f"**verify: FAILED** - {error}"
    ok = bool(checks) and all(check.ok for check in checks)
    lines = [f"- {'PASS' if check.ok else 'FAIL'} - {check.name}: {check.detail}" for check in checks]
    head = f"**verify: {'passed' if ok else 'FAILED'}** ({sum(c.ok for c in checks)} of {len(checks)} checks)"
    return ok, "\n".join([head, "", *lines])


def inspect_release(ref: Any, verify: bool = True) -> Inspection:
    """Read a release's card and run the checks; `verify=False` skips verify_release (which reads every shard)."""
    from .card import read_card

    folder = resolve_release(ref)
    card = read_card(folder)
    verify_ok, verify_md = run_verify(str(ref).strip(), folder) if verify else (None, "*verify_release not run.*")
    return Inspection(str(ref).strip(), folder, card, card_checks(folder, card), verify_ok, verify_md)


def summary_markdown(inspection: Inspection) -> str:
    card = inspection.card
    fields = card.method_fields  # the method's own settings: the keyed method's key, the paper's encoder
    nets = [f"- `{n.spec}`: {n.arch}, width {n.width}, seed {n.seed}, "
            f"{n.num_classes} classes; init sha256 `{n.init_sha256}`" for n in card.authorized]
    encoder = fields.get("encoder") or {}
    size = list(card.image_size)
    keyed = card.method == "keyed"
    lines = [
        f"### {inspection.ref}",
        f"- **method**: {card.method}"
        + (" (the authorized network's secret key stage removes the perturbation; the key is **not** public: "
           "authorized weights come from the publisher, the card holds their sha256)" if keyed else
           " (the paper's UGE; the authorized initial weights are public, in the release)"),
        f"- **rho**: {card.rho} (every pixel within {card.pixel_bound} levels of its source)",
        (f"- **key**: {fields.get('key')}" if keyed else
         f"- **encoder**: {encoder.get('name')}" + (f" @ {encoder['revision']}" if encoder.get("revision") else "")),
        f"- **protected splits**: {', '.join(card.protected_splits)}; image size {size}; "
        f"{card.num_classes} classes; seed {card.seed}; uge-hf {card.uge_hf_version}",
        f"- **generator released**: {fields.get('generator_released')}"
        + (" (anyone can make (x, x_u) pairs with it and learn to undo the protection)" if fields.get("generator_released") else ""),
        "",
        ("**Authorized networks** (private: key stage + backbone, from the publisher)" if keyed else
         "**Authorized networks** (train from `authorized/SPEC.safetensors` with the card's recipe)"),
        "",
        *nets,
    ]
    return "\n".join(lines)


def results_markdown(card: UgeBlock) -> str:
    """The card's `results` block flattened into a two-column table (keys joined by ' / ')."""
    if card.results is None:
        return "*The card has no results block.*"
    rows = ["**Measured** (the card's `uge.results`)", "", "| figure | value |", "|---|---|"]
    rows += [f"| {key} | {value} |" for key, value in _flatten(card.results.to_dict())]
    return "\n".join(rows)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            out += _flatten(item, f"{prefix} / {key}" if prefix else str(key))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = []
        for i, item in enumerate(value):
            label = item.get("spec", item.get("name", str(i)))
            out += _flatten({k: v for k, v in item.items() if k not in ("spec", "name")}, f"{prefix} / {label}")
        return out
    return [(prefix, value)]


def checks_markdown(inspection: Inspection) -> str:
    head = "**Card checks: passed**" if all(ok for _, ok, _ in inspection.checks) else "**Card checks: FAILED**"
    rows = [f"- {'PASS' if ok else 'FAIL'} - {what} ({detail})" for what, ok, detail in inspection.checks]
    return "\n".join([head, "", *rows, "", inspection.verify])


InspectOutputs = tuple  # (summary markdown, preview path, results markdown, checks markdown, message)


def inspect_handler(ref: Any, verify: bool = True) -> InspectOutputs:
    """The "Inspect" button: the five outputs of the tab; an unknown release gives a message."""
    try:
        inspection = inspect_release(ref, verify=verify)
    except UgeError as error:
        _warn(str(error))
        return "", None, "", "", f"Could not inspect: {error}"
    except Exception as error:
        _warn(f"unexpected error: {error}")
        return "", None, "", "", f"Unexpected error ({type(error).__name__}): {error}"
    preview = inspection.folder / "preview.png"
    verdict = {True: "verify passed", False: "verify FAILED", None: "verify not run"}[inspection.verify_ok]
    cards = "card checks passed" if all(ok for _, ok, _ in inspection.checks) else "card checks FAILED"
    message = f"Release read: {cards}, {verdict}." + ("" if inspection.passed else " See the checks below.")
    return (
        summary_markdown(inspection), str(preview) if preview.is_file() else None, results_markdown(inspection.card),
        checks_markdown(inspection), message,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# The page


def _warn(message: str) -> None:
    """A toast on the page when gradio runs the handler; a Python warning otherwise."""
    try:
        import gradio as gr
    except ImportError:
        warnings.warn(message, stacklevel=3)
        return
    gr.Warning(message)


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry, no version check
    try:
        import gradio as gr
    except ImportError:
        raise UgeError("the demo needs gradio: pip install 'uge-hf[demo]'") from None
    return gr


def _protect_intro(assets: DemoAssets) -> str:
    info = assets.info
    specs = ", ".join(n["spec"] if isinstance(n, dict) else str(n) for n in info.get("authorized", [])) or "?"
    kb = assets.weights_bytes / 1024
    shape = f"{info.get('generator_channels')} channels, {info.get('generator_blocks')} residual blocks ({kb:.0f} KB)"
    if "trained_on" in info:  # the demo's own generator (spaces/generator/config.json)
        origin = (
            f"**The generator here is a demo one**: {shape}, trained by `spaces/train_demo_generator.py` on "
            f"{info['trained_on']} for the authorized network `{specs}` with the {info.get('encoder', '?')} encoder. "
            "It shows what the perturbation looks like and that the bound holds; a release trained on *your* dataset "
            "and authorized network protects differently (and does not ship its generator)."
        )
    else:  # a release made with release_generator=True
        origin = (
            f"**The generator here is the one released in** `{assets.folder}` ({shape}; authorized network `{specs}`, "
            f"encoder {info.get('encoder', '?')}), trained on that release's data."
        )
    return f"""
Upload an image (or pick a sample below), choose rho and press **Protect**: you get the protected image, the
noise that was added (amplified: mid-grey is zero, white/black is +-bound) and how far it is from your image.

**keyed** (default) adds the keyed method's class texture (8x8 tiles of 4x4 cells, one sign per image) with this page's public demo
key (`{DEMO_KEY}`; a real release draws a secret key and keeps it in `OUTPUT.private/`): the authorized network's key
stage removes it exactly. **gradient-matching** runs the paper's generator:

{origin}

**rho**: G was trained at rho = {assets.rho} and outputs rho * tanh(...), so its perturbation never exceeds
{assets.rho}. A smaller rho clamps G's output to +-rho after generating (G is not retrained for it); the result is
rounded to 8 bits and clamped to floor(rho * 255) levels of your image, so the bound holds exactly for every pixel.

Images over {MAX_SIDE} px on the longer side are downscaled to {MAX_SIDE} first (the page says so); over
{MAX_PIXELS / 1e6:.0f} MP they are refused. The download is a lossless PNG. Uploads and results are kept only in
temporary folders of this server, deleted after about an hour.
"""


INTRO = """# uge-hf: ungeneralizable examples

A data owner publishes images that one declared **authorized network** can learn from, while other networks
learn little ([Ye & Wang, CVPR 2024](https://arxiv.org/abs/2404.14016)). Each released pixel stays within
rho of the original. See what that does to your images before you publish them, or inspect a release.
"""


def build_app(assets_dir: str | os.PathLike | None = None) -> "gr.Blocks":  # noqa: F821
    """The demo page. `assets_dir` holds `generator/` and `samples/` (default: `default_assets_dir()`)."""
    gr = _gradio()
    assets = load_assets(assets_dir)
    folder = assets.folder

    # delete_cache: gradio's copies of uploads and outputs older than an hour are removed every hour.
    with gr.Blocks(title="uge-hf demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(INTRO)
        with gr.Tab("Protect an image"):
            gr.Markdown(_protect_intro(assets))
            with gr.Row():
                upload = gr.Image(label="Your image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                  format="png", height=280, elem_id="upload")  # fmt: skip
                with gr.Column():
                    rho = gr.Slider(
                        round(math.ceil(MIN_RHO / RHO_STEP) * RHO_STEP, 6), assets.rho, value=assets.rho, step=RHO_STEP,
                        label="rho (L-inf bound on [0, 1] pixels)",
                        info=f"{assets.rho} = the training value ({pixel_bound(assets.rho)} levels); smaller clamps G's output",
                        elem_id="rho",
                    )  # fmt: skip
                    method = gr.Radio(list(DEMO_METHODS), value="keyed", label="method", elem_id="method",
                                      info="keyed: a class texture in the (public) demo key's subspace; gradient-matching: the demo generator")
                    label = gr.Dropdown(list(DEMO_CLASSES), value=DEMO_CLASSES[0], label="class of the image (keyed)", elem_id="label")
                    protect_button = gr.Button("Protect", variant="primary", elem_id="protect")
                    message = gr.Textbox(label="Message", interactive=False, elem_id="protect-message")
            if assets.samples:
                gr.Examples([[str(p)] for p in assets.samples], inputs=[upload], label="Samples (CIFAR-10, 32x32)")
            with gr.Row():
                original = gr.Image(label="Original", format="png", interactive=False, elem_id="original")
                noise = gr.Image(label="Noise (amplified: +-bound -> white/black)", format="png", interactive=False, elem_id="noise")
                protected = gr.Image(label="Protected", format="png", interactive=False, elem_id="protected")
            with gr.Row():
                metrics = gr.Markdown(elem_id="metrics")
                download = gr.File(label="Protected PNG (lossless, full size)", interactive=False, elem_id="download")
            protect_button.click(
                lambda image, value, chosen, name: protect_handler(image, value, folder, chosen, name),
                inputs=[upload, rho, method, label], outputs=[original, noise, protected, metrics, download, message],
                api_name="protect",
            )  # fmt: skip

        with gr.Tab("Inspect a release"):
            gr.Markdown(
                "A release folder on this machine (e.g. `out/cifar10-sample-uge` after `make demo`) or a Hub dataset "
                "id (`user/name`). Shows the card's summary, the preview (original / amplified noise / protected), "
                "the measured results, and checks: the sha256 of each `authorized/*.safetensors` against the card's "
                "`init_sha256` and against the weights rebuilt from the spec, and `uge_hf.verify.verify_release` "
                "(card, weights, shards, every image's format and size)."
            )
            with gr.Row():
                ref = gr.Textbox(label="Release folder or Hub dataset id", placeholder="out/cifar10-sample-uge", scale=4, elem_id="release")
                inspect_button = gr.Button("Inspect", variant="primary", scale=1, elem_id="inspect")
            run_full = gr.Checkbox(value=True, label="Also run verify_release (reads every shard and image; for a Hub id it downloads the whole release)")
            inspect_message = gr.Textbox(label="Message", interactive=False, elem_id="inspect-message")
            with gr.Row():
                with gr.Column():
                    summary = gr.Markdown(elem_id="summary")
                    checks = gr.Markdown(elem_id="checks")
                preview = gr.Image(label="preview.png: original / noise / protected", interactive=False, format="png")
            results = gr.Markdown(elem_id="results")
            inspect_outputs = [summary, preview, results, checks, inspect_message]
            inspect_button.click(inspect_handler, inputs=[ref, run_full], outputs=inspect_outputs, api_name="inspect")
            ref.submit(inspect_handler, inputs=[ref, run_full], outputs=inspect_outputs)
    return app


def launch(assets_dir: str | os.PathLike | None = None, **options) -> "gr.Blocks":  # noqa: F821
    """Build the page and serve it; gradio's `launch` options override the defaults (server_name, server_port,
    prevent_thread_lock, ...). Returns the running page (`.local_url`, `.close()`) once `launch` returns."""
    assets = load_assets(assets_dir)
    app = build_app(assets.folder)
    defaults = dict(show_error=True, max_file_size=MAX_UPLOAD, allowed_paths=[str(assets.folder)])
    app.launch(**{**defaults, **options})
    return app
