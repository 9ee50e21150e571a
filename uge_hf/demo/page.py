"""The demo page: the two tabs (`protect_tab`, `inspect_tab`) in one gradio Blocks, and `launch` to serve it."""

from __future__ import annotations

import math
import os

from ..config import pixel_bound
from ..errors import UgeError
from .inspect_tab import inspect_handler
from .protect_tab import (
    DEMO_CLASSES, DEMO_KEY, DEMO_METHODS, MAX_PIXELS, MAX_SIDE, MIN_RHO, RHO_STEP, DemoAssets, load_assets, protect_handler,
)

MAX_UPLOAD = "50mb"  # gradio refuses bigger uploads in the browser, with its own message


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
