"""The browser demo (`uge-hf demo`, and the Hugging Face Space in `spaces/`): see and try the protection.

Two tabs. **Protect an image** (`protect_tab`) runs a small generator, trained on the embedded CIFAR-10 sample and
shipped with the demo, or the keyed method with a public demo key, on an uploaded image and shows original /
amplified noise / protected with L-inf, PSNR and SSIM, and a lossless PNG to download. **Inspect a release**
(`inspect_tab`) reads a release folder (or Hub dataset) and shows its card summary, preview, measured results and
whether its checks pass. `page` puts them on one gradio page and serves it.

The handlers (`protect_handler`, `inspect_handler`) are plain functions returning the values of the page's
outputs, so they are tested without a browser; a user mistake becomes a message on the page, never a crash.
gradio is an optional dependency (`pip install uge-hf[demo]`), imported only by `build_app` / `launch`.
"""

from __future__ import annotations

from .inspect_tab import (
    Inspection, card_checks, checks_markdown, inspect_handler, inspect_release, resolve_release, results_markdown,
    run_verify, summary_markdown,
)
from .page import INTRO, MAX_UPLOAD, build_app, launch
from .protect_tab import (
    DEMO_CLASSES, DEMO_KEY, DEMO_METHODS, DemoAssets, Protection, check_rho, default_assets_dir, load_assets,
    load_upload, metrics_markdown, protect_handler, protect_image, ssim,
)

__all__ = [
    "DEMO_CLASSES", "DEMO_KEY", "DEMO_METHODS", "INTRO", "MAX_UPLOAD", "DemoAssets", "Inspection", "Protection",
    "build_app", "card_checks", "check_rho", "checks_markdown", "default_assets_dir", "inspect_handler",
    "inspect_release", "launch", "load_assets", "load_upload", "metrics_markdown", "protect_handler", "protect_image",
    "resolve_release", "results_markdown", "run_verify", "ssim", "summary_markdown",
]
