"""The demo (`uge_hf/demo/`): its handlers as plain functions, and the page in a real (headless) Chromium."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported anywhere: no telemetry, no version check

from uge_hf import demo  # noqa: E402

SPACES = Path(__file__).resolve().parent.parent / "spaces"
# $CHROMIUM, else Chromium on PATH (Debian's /usr/bin/chromium, which `make test` installs when it is missing).
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def assets() -> demo.DemoAssets:
    return demo.load_assets(SPACES)


def random_image(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    Image.fromarray(array.squeeze(-1) if channels == 1 else array, mode).save(path)
    return path


def as_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


# --- the shipped generator ------------------------------------------------------------------------------------


def test_shipped_generator_is_small_and_trained_at_rho_004(assets):
    assert assets.rho == 0.04
    assert (SPACES / "generator" / "generator.safetensors").stat().st_size < 600 * 1024
    assert assets.info["authorized"][0]["spec"] == "resnet18-w16-seed0"
    assert {p.name for p in assets.samples} >= {"cat.png", "ship.png"}


# --- Protect an image -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho, bound", [(0.04, 10), (0.02, 5), (1 / 255, 1)])
def test_protect_holds_the_bound_against_the_upload(assets, rho, bound):
    upload = assets.samples[0]
    result = demo.protect_image(upload, rho, assets)
    source = as_rgb(upload)
    written = as_rgb(result.png_path)  # the download, read back from the PNG
    assert result.pixel_bound == bound
    assert np.array_equal(written, result.protected)
    assert written.shape == source.shape
    assert np.abs(written - source).max() <= bound
    assert result.metrics["linf_levels"] <= bound
    assert result.metrics["linf_levels"] >= 1  # the generator does perturb
    assert 0 < result.metrics["ssim"] < 1
    assert result.metrics["psnr_db"] > 20 * np.log10(255 / bound) - 0.01  # PSNR >= that of a uniform +-bound error


def test_odd_sized_rgba_upload_is_converted_with_a_note(assets, tmp_path):
    upload = random_image(tmp_path / "odd.png", 45, 37, "RGBA")
    original, noise, protected, metrics, png, message = demo.protect_handler(str(upload), 0.03, SPACES)
    assert protected.shape == original.shape and noise.shape == original.shape  # enlarged for display alike
    written = as_rgb(Path(png))
    assert written.shape == (37, 45, 3)
    assert np.abs(written - as_rgb(upload)).max() <= 7
    assert "RGBA" in message and "RGBA" in metrics
    assert "| PSNR |" in metrics and "| SSIM |" in metrics and "L-inf" in metrics


def test_huge_image_is_downscaled_with_a_visible_note(assets, tmp_path):
    upload = random_image(tmp_path / "wide.png", 1500, 600)
    result = demo.protect_image(upload, 0.04, assets)
    assert result.original.shape == (410, 1024, 3)
    assert any("downscaled from 1500x600 to 1024x410" in note for note in result.notes)
    assert np.abs(result.protected.astype(int) - result.original).max() <= 10
    assert "downscaled" in demo.metrics_markdown(result)


@pytest.mark.parametrize(
    "make_input, rho, message",
    [
        (lambda tmp: None, 0.04, "no image"),
        (lambda tmp: "", 0.04, "no image"),
        (lambda tmp: (tmp / "notes.txt").write_text("hello") and str(tmp / "notes.txt"), 0.04, "not an image"),
        (lambda tmp: str(tmp / "missing.png"), 0.04, "no file"),
        (lambda tmp: str(random_image(tmp / "tiny.png", 6, 30)), 0.04, "at least 8 pixels"),
        (lambda tmp: str(random_image(tmp / "ok.png", 16, 16)), 0.0, "at least 1/255"),
        (lambda tmp: str(random_image(tmp / "ok.png", 16, 16)), 0.2, "at most 0.04"),
        (lambda tmp: str(random_image(tmp / "ok.png", 16, 16)), float("nan"), "at least 1/255"),
        (lambda tmp: str(random_image(tmp / "ok.png", 16, 16)), "lots", "must be a number"),
    ],
)
def test_bad_inputs_give_a_message_not_a_crash(assets, tmp_path, make_input, rho, message):
    with pytest.warns(UserWarning):  # gr.Warning outside a request: a toast on the page, a warning here
        outputs = demo.protect_handler(make_input(tmp_path), rho, SPACES)
    assert outputs[:5] == (None, None, None, "", None)
    assert outputs[5].startswith("Could not protect") and message in outputs[5], outputs[5]


def test_too_many_pixels_are_refused_before_decoding(assets, tmp_path, monkeypatch):
    monkeypatch.setattr(demo.protect_tab, "MAX_PIXELS", 100 * 100)
    with pytest.warns(UserWarning):
        outputs = demo.protect_handler(str(random_image(tmp_path / "big.png", 200, 120)), 0.04, SPACES)
    assert "200x120 (24,000 pixels): over the 10,000 pixels" in outputs[5]


def test_ssim():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert demo.ssim(a, a) == pytest.approx(1.0)
    slightly = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    very = np.clip(a.astype(int) + rng.integers(-60, 61, a.shape), 0, 255).astype(np.uint8)
    assert 1 > demo.ssim(a, slightly) > demo.ssim(a, very) > 0
    assert demo.ssim(a, very) == pytest.approx(demo.ssim(very, a))
    # Constant images: no variance, so SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1).
    c1 = (0.01 * 255) ** 2
    x, y = np.full((20, 20, 3), 100, np.uint8), np.full((20, 20, 3), 140, np.uint8)
    assert demo.ssim(x, y) == pytest.approx((2 * 100 * 140 + c1) / (100**2 + 140**2 + c1))
    assert demo.ssim(x[:9, :8], y[:9, :8]) == pytest.approx(demo.ssim(x, y))  # smaller than the window


# --- Inspect a release ----------------------------------------------------------------------------------------


@pytest.fixture
def release(tiny_release) -> Path:
    """The suite's shared tiny release (conftest): card, shards, authorized weights, preview."""
    return tiny_release


def test_inspect_shows_card_preview_results_and_checks(release):
    summary, preview, results, checks, message = demo.inspect_handler(str(release))
    assert message == "Release read: card checks passed, verify passed.", message
    assert "resnet18-w4-seed0" in summary and "surrogate" in summary and "0.04" in summary and "init sha256" in summary
    assert Path(preview) == release / "preview.png"
    assert "perturbation / train / linf_levels" in results and "authorized / resnet18-w4-seed0 / clean_train_accuracy" in results
    assert "Card checks: passed" in checks and "FAIL -" not in checks
    assert "**verify: passed**" in checks and "PASS - images train" in checks


def test_inspect_a_keyed_release_shows_the_method_and_no_public_key(keyed_release, tmp_path):
    summary, _, results, checks, message = demo.inspect_handler(str(keyed_release))
    assert message == "Release read: card checks passed, verify passed.", message
    assert "**method**: keyed" in summary and "not** public" in summary
    assert "PASS - resnet18-w4-seed0: weights are private" in checks and "PASS - no key material in the release" in checks
    assert "invariance / images_over_tolerance | 0" in results
    leaky = Path(shutil.copytree(keyed_release, tmp_path / "leaky"))
    shutil.copy(keyed_release.parent / f"{keyed_release.name}.private" / "key.json", leaky / "key.json")
    *_, checks, message = demo.inspect_handler(str(leaky))
    assert "FAIL - no key material in the release" in checks and "card checks FAILED" in message


def test_inspect_a_lock_release_shows_the_poison_and_no_public_key(lock_release):
    summary, _, results, checks, message = demo.inspect_handler(str(lock_release))
    assert message == "Release read: card checks passed, verify passed.", message
    assert "**method**: lock" in summary and "not** public" in summary and "**poison**: texture" in summary
    assert "PASS - no key material in the release" in checks
    assert "unlock / rows_exact | 32" in results


def test_inspect_flags_weights_that_do_not_match_the_card(release, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(release, tampered)
    (tampered / "authorized" / "resnet18-w4-seed0.safetensors").write_bytes(b"tampered")
    *_, checks, message = demo.inspect_handler(str(tampered))
    assert message.startswith("Release read: card checks FAILED, verify FAILED.")
    assert "Card checks: FAILED" in checks and "**verify: FAILED**" in checks
    *_, message = demo.inspect_handler(str(tampered), verify=False)
    assert "verify not run" in message


@pytest.mark.parametrize(
    "ref, message",
    [
        ("", "no release given"),
        ("   ", "no release given"),
        ("./no/such/folder", "no folder at"),
        ("someone/not-a-release-xyz", "is not a local folder"),  # HF_HUB_OFFLINE=1 in tests (conftest)
    ],
)
def test_unknown_release_gives_a_message(ref, message):
    with pytest.warns(UserWarning):
        outputs = demo.inspect_handler(ref)
    assert outputs[:4] == ("", None, "", "") and message in outputs[4], outputs[4]


def test_folder_that_is_not_a_release_gives_a_message(tmp_path):
    with pytest.warns(UserWarning):
        outputs = demo.inspect_handler(str(tmp_path))
    assert "not a uge-hf release" in outputs[4]


# --- the page in a real browser -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    """The demo served on 127.0.0.1 in this process's threads, as `uge-hf demo` serves it."""
    port = free_port()
    app = demo.launch(SPACES, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield app.local_url
    app.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make test` (it installs Debian's package), or set $CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_page_protects_an_upload_within_the_bound(server, browser, release, tmp_path):
    upload = SPACES / "samples" / "cat.png"
    page = browser.new_page(viewport={"width": 1280, "height": 1100}, accept_downloads=True)
    page.set_default_timeout(60_000)
    page.goto(server)

    page.locator("#upload input[type=file]").set_input_files(str(upload))
    page.locator("#upload img").first.wait_for()
    rho = page.locator("#rho input[type=number]")
    rho.fill("0.02")
    rho.press("Enter")
    page.click("#protect")
    page.wait_for_function("document.querySelector('#protect-message textarea').value.startsWith('Protected')")
    page.locator("#metrics").get_by_text("SSIM").wait_for()
    assert "floor(0.02 x 255) = 5" in page.inner_text("#metrics")
    assert "keyed" in page.inner_text("#metrics")  # the page's default method
    for output in ("#original", "#noise", "#protected"):
        page.locator(f"{output} img").first.wait_for()

    with page.expect_download() as download:
        page.locator("#download a").first.click()
    downloaded = tmp_path / download.value.suggested_filename
    download.value.save_as(downloaded)
    assert downloaded.name == "cat-protected.png"
    protected, source = as_rgb(downloaded), as_rgb(upload)
    assert protected.shape == source.shape
    assert 1 <= np.abs(protected - source).max() <= 5

    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    if os.environ.get("UGE_HF_DEMO_SCREENSHOT"):  # refresh the README's screenshot: set it to spaces/screenshot.png
        shutil.copyfile(tmp_path / "demo.png", os.environ["UGE_HF_DEMO_SCREENSHOT"])

    # The Inspect tab reads a release folder.
    page.get_by_role("tab", name="Inspect a release").click()
    page.fill("#release textarea, #release input", str(release))
    page.click("#inspect")
    page.wait_for_function("document.querySelector('#inspect-message textarea').value.startsWith('Release read')")
    assert page.input_value("#inspect-message textarea") == "Release read: card checks passed, verify passed."
    assert "Card checks: passed" in page.inner_text("#checks")
    page.screenshot(path=str(tmp_path / "inspect.png"), full_page=True)
    page.close()


def test_page_shows_messages_for_bad_input(server, browser):
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(server)
    page.click("#protect")  # no image
    page.wait_for_function("document.querySelector('#protect-message textarea').value.includes('no image')")
    page.get_by_text("upload one or pick a sample first").first.wait_for()  # the toast too
    page.get_by_role("tab", name="Inspect a release").click()
    page.fill("#release textarea, #release input", "./no/such/release")
    page.click("#inspect")
    page.wait_for_function("document.querySelector('#inspect-message textarea').value.includes('no folder at')")
    page.close()


def test_demo_command_without_a_generator_is_a_one_line_error(tmp_path):
    from typer.testing import CliRunner

    from uge_hf.cli import app

    result = CliRunner().invoke(app, ["demo", "--assets", str(tmp_path)])
    assert result.exit_code == 1 and "no demo generator in" in result.output


def test_keyed_protection_of_an_upload_stays_in_the_key_subspace(tmp_path):
    from uge_hf.key import load_secret_key

    upload = random_image(tmp_path / "up.png", 37, 45)
    result = demo.protect_image(upload, 0.04, demo.load_assets(SPACES), method="keyed", label="cat")
    assert result.method == "keyed" and np.abs(result.protected.astype(int) - result.original).max() <= 10
    stage = load_secret_key(SPACES / demo.DEMO_KEY).stage()
    as_tensor = lambda a: torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1)[None]
    adjusted = result.original.astype(np.int64)  # T(x) = x at the default pull 0
    assert torch.allclose(stage(as_tensor(result.protected)), stage(as_tensor(adjusted)), atol=1e-9)
    outputs = demo.protect_handler(str(upload), 0.04, SPACES, "keyed", "not-a-class")
    assert outputs[5].startswith("Could not protect") and "unknown class" in outputs[5]
