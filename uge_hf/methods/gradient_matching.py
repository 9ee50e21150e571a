"""The paper's method (Ye & Wang, CVPR 2024): a perturbation trained on L_gm + lambda_fd L_fd + lambda_ud L_ud.

    data -> trajectories + encoder features (computed once, cached) -> generator / per-sample / replay solver
         -> apply (bounded quantisation)

Every expensive intermediate is cached in a work folder beside the output (`OUTPUT.uge-work/`), keyed by the
config and the data, so running the same command again after a kill resumes where it stopped. The pipeline
removes the work folder once the release is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from datasets import DatasetDict
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..version import __version__
from ..card import AuthorizedEntry
from ..apply import protect_images, quantize_within_bound
from ..config import GENERATOR_FREE_SOLVERS, MIXED_PRECISION, ProtectConfig, Recipe
from ..data import ClassificationTensors, held_out_split, to_tensors
from ..encoders import Encoder, SurrogateEncoder, load_clip_encoder
from ..progress import is_main_process
from ..errors import UgeError
from ..files import atomic_write, json_bytes, weights_bytes, weights_tensors
from ..solver import FeatureTargets, build_step_context, refine_along_replay, refine_per_sample, train_generator
from ..specs import ModelSpec, build_model
from ..inputs import INPUT_MEAN, INPUT_STD
from ..training import accuracy, train_classifier
from ..trajectory import Trajectory, compute_trajectory
from .base import MethodInput, MethodResult

T = TypeVar("T")
SURROGATE_SPEC = "cnn-w32"  # the surrogate encoder's backbone: a small, fast zoo network (seed: the config's)


def protect(inputs: MethodInput) -> MethodResult:
    """Train the paper's perturbation on the first protected split and apply it to every protected split."""
    config, clean, splits = inputs.config, inputs.fit, inputs.splits
    class_names = clean.class_names
    # the resolved precision is part of the config from here on: the work folder's key and the card record it
    config = dataclasses.replace(config, mixed_precision=resolve_mixed_precision(config.mixed_precision))
    accelerator = _accelerator(config.mixed_precision)
    work_dir = _work_dir(inputs.work_dir, config, clean, accelerator)
    cache = _Cache(work_dir, accelerator)
    # The networks actually trained: the declared specs, or (private, the default) the same architectures with
    # secret init seeds, drawn once and kept in the work folder so a resumed run uses the same ones.
    inits = cache.get(
        "authorized-inits.json",
        lambda: {spec: spec if config.publish_authorized else _secret_init(spec) for spec in config.authorized},
        lambda value, path: path.write_text(json.dumps(value)),
        lambda path: json.loads(path.read_text()),
    )

    trajectories = [
        cache.get(
            f"trajectory-{index}.safetensors",
            lambda init=inits[spec]: compute_trajectory(init, clean.images, clean.labels, len(class_names), config.recipe, accelerator.device),
            lambda value, path: value.save(path),
            lambda path, init=inits[spec]: Trajectory.load(path, init, len(class_names)),
        )
        for index, spec in enumerate(config.authorized)
    ]
    encoder = _encoder(config, clean, cache, accelerator.device)
    features = cache.get(
        "features.safetensors",
        lambda: FeatureTargets.compute(encoder, clean.images, clean.labels, class_names, accelerator.device),
        lambda value, path: save_file(vars(value), str(path)),
        lambda path: FeatureTargets(**load_file(str(path))),
    )
    ctx = build_step_context(config, trajectories, encoder, features, len(class_names), accelerator.device)
    generator, losses, protected_fit = None, {}, None
    if config.solver not in GENERATOR_FREE_SOLVERS:
        generator, log = train_generator(accelerator, config, clean.images, clean.labels, ctx, work_dir / "generator")
        losses["generator_last_epoch"] = _last_epoch_means(log, config.generator_epochs)
    if config.solver == "replay":
        x_u, direct = refine_along_replay(accelerator, ctx, clean.images, clean.labels, work_dir / "replay")
        losses["replay_first_epoch"], losses["replay_last_epoch"] = direct["first"], direct["last"]
    elif config.solver != "generator":
        start = None if generator is None else protect_images(generator, clean.images, config.rho, config.pixel_bound, accelerator.device)
        x_u, direct = refine_per_sample(accelerator, ctx, clean.images, clean.labels, start, work_dir / "per-sample")
        losses["per_sample_first_step"], losses["per_sample_last_step"] = direct["first"], direct["last"]
    if config.solver != "generator":
        protected_fit = quantize_within_bound(clean.images, x_u, config.pixel_bound)

    result = MethodResult(protected={}, authorized=[], work_dir=work_dir, barrier=accelerator.wait_for_everyone,
                          resolved={"mixed_precision": config.mixed_precision})
    if accelerator.is_main_process:
        result.protected = _apply(splits, config, generator, clean, protected_fit, inputs.image_column, inputs.label_column, accelerator.device)
        protected_fit = result.protected[config.splits[0]]
        for spec in config.authorized:
            entry, weights = _authorized_entry(spec, inits[spec], len(class_names))
            if config.publish_authorized:
                entry = dataclasses.replace(entry, weights=f"authorized/{spec}.safetensors")
                result.authorized.append(entry)
                result.public_files[f"authorized/{spec}.safetensors"] = weights
                result.public_files[f"authorized/{spec}.json"] = json_bytes(_weights_json(entry, config, clean))
            else:
                entry = dataclasses.replace(entry, private=True)
                result.authorized.append(entry)
                result.private_files[f"authorized/{spec}/model.safetensors"] = weights
                result.private_files[f"authorized/{spec}/config.json"] = json_bytes(
                    {**_weights_json(entry, config, clean), "method": "gradient-matching"})
        result.card = {
            "encoder": {"name": encoder.name if config.encoder != "surrogate" else "surrogate", "revision": encoder.revision},
            "loss_weights": {"gm": config.lambda_gm, "fd": config.lambda_fd, "ud": config.lambda_ud,
                             "triplet_margin": config.triplet_margin, "omega": config.omega,
                             "undistill_hacker": config.undistill_hacker},
            "generator_released": config.release_generator,
        }
        result.results = _measure(config, clean, trajectories, encoder, ctx, splits, protected_fit, losses,
                                  inputs.image_column, inputs.label_column, accelerator.device)
        if config.release_generator:
            result.public_files["generator.safetensors"] = weights_bytes(generator)
    return result


def resolve_mixed_precision(requested: str | None) -> str:
    """The mixed precision to train G with: `requested` when given, else Accelerate's own configuration.

    Accelerate's configuration, in its own order: `ACCELERATE_MIXED_PRECISION` (what `accelerate launch` exports
    from its flags and config file, or what the user set), else the `mixed_precision` of the default config file
    that `accelerate config` writes (a plain `python` or `torchrun` run does not read it otherwise), else "no".
    Returns one of "no", "fp16", "bf16"; a configured value outside those is a UgeError naming where it came from.
    """
    from accelerate.commands.config import default_config_file, load_config_from_file

    if requested is not None:
        return requested
    value, where = os.environ.get("ACCELERATE_MIXED_PRECISION"), "ACCELERATE_MIXED_PRECISION"
    if not value and os.path.isfile(default_config_file):
        try:
            value, where = load_config_from_file(default_config_file).mixed_precision, default_config_file
        except Exception as e:  # a broken Accelerate config file: the user's to fix, say which
            raise UgeError(f"Accelerate's config file {default_config_file} cannot be read ({e}): fix it with"
                           " `accelerate config`, or pass --mixed-precision") from None
    value = str(getattr(value, "value", value) or "no").lower()  # the config file holds a PrecisionType enum
    if value not in MIXED_PRECISION:
        raise UgeError(f"Accelerate is configured with mixed precision {value!r} ({where}); uge-hf trains G with"
                       f" {', '.join(MIXED_PRECISION)}: pass --mixed-precision")
    return value


def _accelerator(mixed_precision: str):
    """Accelerate's `Accelerator` for this run, at `mixed_precision` (resolved: "no", "fp16" or "bf16").

    Accelerate keeps one precision per process: when it was already set up in this process (an earlier protect()
    call, the caller's own Accelerator) with another one, that is a UgeError (Accelerate itself would refuse).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, is_initialized

    if is_initialized() and AcceleratorState().mixed_precision != mixed_precision:
        raise UgeError(f"Accelerate is already set up in this process with mixed precision"
                       f" {AcceleratorState().mixed_precision!r} and keeps it for the process's life: run protect() with"
                       f" mixed_precision={mixed_precision!r} in a new process")
    # Accelerate only picks gloo for a multi-process launch (torchrun) when told to stay on the CPU.
    multi_process_without_gpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision, cpu=multi_process_without_gpu)


def _work_dir(work_dir: Path | None, config: ProtectConfig, clean: ClassificationTensors, accelerator) -> Path:
    """The cache folder of this exact run: a different config or different data starts it afresh."""
    key = hashlib.sha256(config.to_json().encode())
    key.update(clean.images.numpy().tobytes())
    key.update(clean.labels.numpy().tobytes())
    run_id = key.hexdigest()[:16]
    if work_dir is None:
        work_dir = Path(tempfile.gettempdir()) / f"uge-hf-{run_id}"
    marker = work_dir / "run.json"
    if accelerator.is_main_process:
        if marker.exists() and json.loads(marker.read_text()).get("run_id") != run_id:
            shutil.rmtree(work_dir)  # another run's cache: its checkpoints do not apply to this config
        work_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"run_id": run_id, "uge_hf_version": __version__}))
    accelerator.wait_for_everyone()
    return work_dir


class _Cache:
    """Values computed once by the main process, saved atomically in the work folder, loaded by every process."""

    def __init__(self, work_dir: Path, accelerator):
        self.work_dir = work_dir
        self.accelerator = accelerator

    def get(self, name: str, compute: Callable[[], T], save: Callable[[T, Path], None], load: Callable[[Path], T]) -> T:
        path = self.work_dir / name
        if not path.exists() and self.accelerator.is_main_process:
            atomic_write(path, lambda partial: save(compute(), partial))
        self.accelerator.wait_for_everyone()
        return load(path)


def _encoder(config: ProtectConfig, clean: ClassificationTensors, cache: _Cache, device) -> Encoder:
    """The CLIP checkpoint named by the config, or a surrogate trained on the clean data."""
    if config.encoder != "surrogate":
        return load_clip_encoder(config.encoder, config.encoder_revision)
    num_classes = len(clean.class_names)
    spec = f"{SURROGATE_SPEC}-seed{config.seed}"
    mean, std = torch.full((3,), INPUT_MEAN), torch.full((3,), INPUT_STD)

    def fit() -> SurrogateEncoder:
        backbone = build_model(spec, num_classes)
        recipe = Recipe(**{**vars(config.recipe), "epochs": config.surrogate_epochs, "seed": config.seed})
        train_classifier(backbone, clean.images, clean.labels, recipe, device, description="surrogate encoder")
        return SurrogateEncoder.fit(backbone, clean.images, clean.labels, mean, std, num_classes=num_classes)

    return cache.get(
        "surrogate.safetensors",
        fit,
        lambda encoder, path: save_file(weights_tensors(encoder), str(path)),
        lambda path: SurrogateEncoder.from_state_dict(build_model(spec, num_classes), load_file(str(path))),
    )


def _apply(splits: DatasetDict, config: ProtectConfig, generator, clean: ClassificationTensors, protected_fit: Tensor | None,
           image_column: str, label_column: str, device) -> dict[str, Tensor]:
    """Protected uint8 images of every protected split.

    `protected_fit` is the first split already protected (per-sample / hybrid / replay solvers); None: G protects it.
    """
    protected = {}
    for name in config.splits:
        if name == config.splits[0] and protected_fit is not None:
            protected[name] = protected_fit
            continue
        tensors = clean if name == config.splits[0] else to_tensors(
            splits[name], image_column, label_column, clean.image_size, clean.class_names, progress=is_main_process()
        )
        protected[name] = protect_images(generator, tensors.images, config.rho, config.pixel_bound, device)
    return protected


def _measure(config, clean, trajectories, encoder, ctx, splits, protected, losses, image_column, label_column, device) -> dict:
    """Cheap facts about the release (not the hacker evaluation, which trains networks: `uge-hf evaluate`)."""
    test_name = held_out_split(splits, config.splits, label_column) if config.keep_other_splits else None
    test = to_tensors(splits[test_name], image_column, label_column, clean.image_size, clean.class_names) if test_name else None
    nets = []
    for spec, trajectory in zip(config.authorized, trajectories):  # the declared spec: a private init stays private
        model = trajectory.model()
        nets.append({
            "spec": spec,
            "clean_train_accuracy": round(accuracy(model, clean.images, clean.labels, device), 4),
            "clean_test_accuracy": round(accuracy(model, test.images, test.labels, device), 4) if test else None,
            "protected_train_accuracy": round(accuracy(model, protected, clean.labels, device), 4),
        })
    with torch.no_grad():
        cosines = [
            torch.nn.functional.cosine_similarity(
                encoder.encode_images(chunk.to(device).float() / 255).float().cpu(), ctx.features.clean[i : i + 256]
            )
            for i, chunk in zip(range(0, len(protected), 256), protected.split(256))
        ]
    return {
        "authorized": nets,  # accuracies on the card's `results.test_split`, this same split
        "feature_cosine": round(torch.cat(cosines).mean().item(), 4),
        "losses": losses,
    }


def _last_epoch_means(log: list[dict], epochs: int) -> dict:
    """G's loss terms averaged over its last epoch (less noisy than the last step)."""
    last_epoch = log[-max(1, len(log) // epochs):]
    return {name: round(sum(e[name] for e in last_epoch) / len(last_epoch), 4) for name in last_epoch[0] if name != "step"}


def _secret_init(spec_text: str) -> str:
    """The spec's architecture with a secret init seed (63 bits from `secrets`; torch seeds are 64-bit at most)."""
    import dataclasses
    import secrets

    return str(dataclasses.replace(ModelSpec.parse(spec_text), seed=secrets.randbits(63)))


def _authorized_entry(spec_text: str, init: str, num_classes: int) -> tuple[AuthorizedEntry, bytes]:
    """What the card declares about one authorized network, and its initial weights (built from `init`).

    A private init (`init` != the declared spec) records no seed: the spec names the architecture only.
    """
    weights = weights_bytes(build_model(init, num_classes))
    entry = AuthorizedEntry.from_spec(spec_text, num_classes, hashlib.sha256(weights).hexdigest(),
                                      secret_seed=init != spec_text)
    return entry, weights


def _weights_json(entry: AuthorizedEntry, config: ProtectConfig, clean: ClassificationTensors) -> dict:
    """The sidecar of an authorized weights file: the card's entry (less where the file is), the input transform and
    the recipe."""
    declared = {k: v for k, v in entry.to_dict().items() if k not in ("weights", "private")}
    return {**declared, "input": {"image_size": list(clean.image_size), "mean": INPUT_MEAN, "std": INPUT_STD},
            "recipe": vars(config.recipe)}
