"""Training the perturbation generator G on L = lambda_gm L_gm + lambda_fd L_fd + lambda_ud L_ud, with Accelerate.

The canonical Accelerate loop (as in the diffusers training scripts): `prepare`, `backward`, `save_state` every
`checkpoint_every` steps, and `load_state` to resume a killed run from its last complete checkpoint. All
randomness of a step (data order, checkpoint sampling, augmentation) is a pure function of (seed, step), so a
resumed run takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .config import ProtectConfig
from .encoders import Encoder
from .apply import perturb
from .errors import UgeError
from .files import atomic_write
from .losses import feature_deviation_loss, gradient_matching_loss, least_similar_class, undistill_loss
from .models import PerturbationGenerator
from .progress import progress_bar
from .specs import build_model
from .training import augment, epoch_permutation, normalize, recipe_optimizer, to_unit
from .trajectory import State, Trajectory

LOSS_TERMS = ("gm", "fd", "ud")


def build_generator(config: ProtectConfig) -> PerturbationGenerator:
    """G's initialisation depends on the config's seed only (CPU RNG, caller's RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return PerturbationGenerator(config.rho, config.generator_channels, config.generator_blocks)


@dataclass
class FeatureTargets:
    """What L_fd compares against, computed once from the clean data rather than at every step."""

    clean: Tensor  # N x D encoder features of the clean images
    class_embeddings: Tensor  # K x D encoder embeddings of the class names
    targets: Tensor  # N: the class least similar to each clean image (the triplet's positive)

    @classmethod
    @torch.no_grad()
    def compute(cls, encoder: Encoder, images: Tensor, labels: Tensor, class_names: list[str], device) -> FeatureTargets:
        encoder.to(device)
        clean = torch.cat([encoder.encode_images(to_unit(chunk.to(device))).float().cpu() for chunk in images.split(256)])
        class_embeddings = encoder.encode_classes(class_names).float().cpu()
        return cls(clean, class_embeddings, least_similar_class(clean, class_embeddings, labels))


@dataclass
class StepContext:
    """Everything a loss evaluation needs besides the batch."""

    config: ProtectConfig
    trajectories: list[Trajectory]
    authorized_final: list[nn.Module]  # the trained authorized nets (eval mode) that L_ud keeps right on x_u
    authorized_functional: list[nn.Module]  # one module per authorized net, run at sampled checkpoints by L_gm
    hacker: nn.Module  # the random, fixed hacker of L_ud
    encoder: Encoder
    features: FeatureTargets
    device: torch.device


@dataclass
class ReplayedStep:
    """One SGD step of the authorized recipe, as the replay solver re-runs it: where L_gm is matched exactly."""

    states: list[State]  # each authorized net's state before the step
    augmentation: Tensor  # the recipe's augmentation generator state at the step (`torch.Generator.get_state`)


def uge_loss(ctx: StepContext, x: Tensor, x_u: Tensor, y: Tensor, index: Tensor, step: int,
             replayed: ReplayedStep | None = None) -> tuple[Tensor, dict]:
    """The three losses on one batch (terms with weight 0 are skipped: L_gm is the expensive one).

    L_gm is matched at a checkpoint sampled from each trajectory and a random augmentation (seeded by `step`), or,
    given `replayed`, at exactly the states and augmentation of that recipe step. A term that is not finite
    (NaN, inf: training diverged) raises UgeError: every solver's loss log passes through here.
    """
    config = ctx.config
    rng = torch.Generator()
    if replayed is None:
        rng.manual_seed(config.seed * 1_000_003 + step)
    else:
        rng.set_state(replayed.augmentation)
    terms: dict[str, Tensor] = {}
    if config.lambda_gm > 0:
        # The authorized user trains on augmented batches, so gradients are matched on the same augmentation.
        x_seen, x_u_seen = augment([x, x_u], config.recipe, rng)
        matches = []
        for number, (trajectory, model) in enumerate(zip(ctx.trajectories, ctx.authorized_functional)):
            if replayed is None:
                # theta_0 .. theta_{E-1}: the states the recipe takes SGD steps from.
                epoch = int(torch.randint(0, len(trajectory.states) - 1, (1,), generator=rng))
                state = {name: t.to(ctx.device) for name, t in trajectory.states[epoch].items()}
            else:
                state = replayed.states[number]
            matches.append(gradient_matching_loss(model, state, normalize(x_seen), normalize(x_u_seen), y))
        terms["gm"] = torch.stack(matches).mean()
    if config.lambda_fd > 0:
        feats = ctx.features
        protected = ctx.encoder.encode_images(x_u)
        idx = index.cpu()
        terms["fd"] = feature_deviation_loss(
            feats.clean[idx].to(ctx.device),
            protected,
            feats.class_embeddings[y.cpu()].to(ctx.device),
            feats.class_embeddings[feats.targets[idx]].to(ctx.device),
            config.triplet_margin,
        )
    if config.lambda_ud > 0:
        hacker_logits = ctx.hacker(normalize(x_u))
        terms["ud"] = torch.stack(
            [undistill_loss(net(normalize(x_u)), hacker_logits, y, config.omega) for net in ctx.authorized_final]
        ).mean()
    weights = {"gm": config.lambda_gm, "fd": config.lambda_fd, "ud": config.lambda_ud}
    total = sum(weights[name] * value for name, value in terms.items())
    logged = {name: value.item() for name, value in terms.items()}
    if not all(math.isfinite(value) for value in logged.values()):
        hint = (f"the fixed networks it uses are broken: lower the recipe's learning rate (recipe.lr = {config.recipe.lr})"
                if step == 0 else "lower generator_lr (generator, hybrid) or per_sample_step_size (per-sample, replay)")
        raise UgeError(f"the protection diverged: at step {step} the loss terms are {logged}; nothing was written;"
                       f" {hint}")
    return total, logged


def _latest_checkpoint(state_dir: Path) -> tuple[int, Path] | None:
    """The newest checkpoint whose save completed (its `step.json` is written last)."""
    done = [(json.loads((d / "step.json").read_text())["step"], d) for d in state_dir.glob("step-*") if (d / "step.json").exists()]
    return max(done) if done else None


def train_generator(
    accelerator, config: ProtectConfig, images: Tensor, labels: Tensor, ctx: StepContext, state_dir: Path
) -> tuple[nn.Module, list[dict]]:
    """Train G; returns it (unwrapped) and the per-step loss log (this process's, main's when logged)."""
    generator = build_generator(config)
    optimizer = torch.optim.Adam(generator.parameters(), lr=config.generator_lr)
    generator, optimizer = accelerator.prepare(generator, optimizer)

    world, rank = accelerator.num_processes, accelerator.process_index
    per_process = len(images) // world
    steps_per_epoch = -(-per_process // config.batch_size)
    total_steps = config.generator_epochs * steps_per_epoch

    start_step, log = 0, []
    latest = _latest_checkpoint(state_dir)
    if latest is not None:
        start_step, path = latest
        accelerator.load_state(str(path))
        log = json.loads((path / "log.json").read_text())

    generator.train()
    with progress_bar("generator", total=total_steps) as advance:
        for _ in range(start_step):
            advance()
        for step in range(start_step, total_steps):
            epoch, position = divmod(step, steps_per_epoch)
            mine = epoch_permutation(len(images), config.seed, epoch)[rank::world][:per_process]
            index = mine[position * config.batch_size : (position + 1) * config.batch_size]
            x = to_unit(images[index].to(accelerator.device))
            y = labels[index].to(accelerator.device)
            with accelerator.autocast():
                x_u = perturb(generator, x, config.rho)
                loss, terms = uge_loss(ctx, x, x_u, y, index, step)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            log.append({"step": step + 1, "loss": loss.item(), **terms})
            advance(loss=loss.item(), **terms)
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < total_steps:
                _save_checkpoint(accelerator, state_dir, step + 1, log)
    return accelerator.unwrap_model(generator), log


def _save_checkpoint(accelerator, state_dir: Path, step: int, log: list[dict]) -> None:
    path = state_dir / f"step-{step}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / "log.json").write_text(json.dumps(log))
        (path / "step.json").write_text(json.dumps({"step": step}))
        for older in state_dir.glob("step-*"):
            if older != path:
                shutil.rmtree(older, ignore_errors=True)
    accelerator.wait_for_everyone()


def build_step_context(config: ProtectConfig, trajectories: list[Trajectory], encoder: Encoder,
                       features: FeatureTargets, num_classes: int, device: torch.device) -> StepContext:
    """Move the fixed networks to `device` and freeze them: only G is trained."""
    authorized_final = [t.model().to(device).eval() for t in trajectories]
    authorized_functional = [t.model().to(device).train() for t in trajectories]
    hacker = build_model(config.undistill_hacker, num_classes).to(device).eval()
    for net in (*authorized_final, hacker, encoder):
        net.requires_grad_(False)
    return StepContext(
        config, trajectories, authorized_final, authorized_functional, hacker, encoder.to(device), features, device
    )


def refine_per_sample(
    accelerator, ctx: StepContext, images: Tensor, labels: Tensor, start: Tensor | None, state_dir: Path
) -> tuple[Tensor, dict]:
    """Optimise each batch's x_u directly on the UGE loss: sign-gradient steps projected to the rho ball.

    `start` (uint8, like `images`) is where each x_u starts: the generator's output for the hybrid solver,
    None for the clean images. Batches are split across processes; each finished batch is saved in
    `state_dir`, so a killed run resumes at the first unfinished one. Returns the protected images as
    float [0, 1] on the CPU (main process: all of them) and the loss terms at the first and at the last step,
    averaged over batches (whether the steps moved each term, and which way).
    """
    config = ctx.config
    rho, step_size = config.rho, config.per_sample_step_size or config.rho / 4
    state_dir.mkdir(parents=True, exist_ok=True)
    batches = list(torch.arange(len(images)).split(config.batch_size))
    mine = range(accelerator.process_index, len(batches), accelerator.num_processes)
    with progress_bar("per-sample", total=len(mine)) as advance:
        for number in mine:
            path = state_dir / f"batch-{number:06d}.safetensors"
            if not path.exists():
                index = batches[number]
                x = to_unit(images[index].to(ctx.device))
                y = labels[index].to(ctx.device)
                base = x if start is None else to_unit(start[index].to(ctx.device))
                delta = (base - x).clamp(-rho, rho).requires_grad_(True)
                logged = {}
                for step in range(config.per_sample_steps):
                    with accelerator.autocast():
                        loss, terms = uge_loss(ctx, x, (x + delta).clamp(0, 1), y, index, number * 1_000 + step)
                    logged.setdefault("first", {"loss": loss.item(), **terms})
                    logged["last"] = {"loss": loss.item(), **terms}
                    delta = _sign_step(loss, delta, step_size, rho).requires_grad_(True)
                x_u = (x + delta).clamp(0, 1).detach().cpu()
                atomic_write(path, lambda partial: save_file({"x_u": x_u}, str(partial), metadata={"losses": json.dumps(logged)}))
            advance()
    accelerator.wait_for_everyone()
    protected, logs = [], []
    for number in range(len(batches)):
        with safe_open(str(state_dir / f"batch-{number:06d}.safetensors"), "pt") as batch:
            protected.append(batch.get_tensor("x_u"))
            logs.append(json.loads(batch.metadata()["losses"]))
    return torch.cat(protected), {when: _mean_terms([log[when] for log in logs]) for when in ("first", "last")}


def _sign_step(loss: Tensor, delta: Tensor, step_size: float, rho: float) -> Tensor:
    """One signed-gradient descent step on the perturbation, projected back to the rho ball."""
    (grad,) = torch.autograd.grad(loss, delta)
    if not torch.isfinite(grad).all():
        raise UgeError("the protection diverged: the loss's gradient is not finite; nothing was written")
    return (delta - step_size * grad.sign()).clamp(-rho, rho).detach()


def _mean_terms(logs: list[dict]) -> dict:
    return {name: round(sum(log[name] for log in logs) / len(logs), 4) for name in logs[0]}


def refine_along_replay(accelerator, ctx: StepContext, images: Tensor, labels: Tensor, state_dir: Path) -> tuple[Tensor, dict]:
    """The replay solver: re-run the authorized recipe on the clean data, perturbing each batch right before its step.

    Before every SGD step of the recipe, the rows of that step's batch take one sign-gradient step on the UGE loss,
    with L_gm matched at the authorized nets' states of that step, on that batch (so BatchNorm sees the same
    batch) and with that augmentation: the very gradients an authorized user's training from the released
    weights takes, if x_u keeps them matched. (The other solvers match at epoch-end states with random
    augmentations.) Every row gets one step per recipe epoch. The replay is sequential, so the main process runs
    it and the others wait for its `replay.done` file. Its state (x_u, nets, optimisers, augmentation generator)
    is saved after every epoch and a killed run resumes at its last finished epoch. Returns x_u (float [0, 1],
    CPU) and the loss terms averaged over the first and over the last epoch's steps.
    """
    config, recipe = ctx.config, ctx.config.recipe
    rho, step_size = config.rho, config.per_sample_step_size or config.rho / 4
    checkpoint, finished = state_dir / "replay.pt", state_dir / "replay.done"
    if accelerator.is_main_process:
        state_dir.mkdir(parents=True, exist_ok=True)
        nets = [trajectory.model(trajectory.states[0]).to(ctx.device).train() for trajectory in ctx.trajectories]
        optimizers = [recipe_optimizer(net, recipe, len(images)) for net in nets]
        augmentation = torch.Generator().manual_seed(recipe.seed)
        delta, epoch_logs = torch.zeros(images.shape), []
        if checkpoint.exists():
            saved = torch.load(checkpoint, weights_only=True)
            delta, epoch_logs = saved["delta"], saved["epoch_logs"]
            augmentation.set_state(saved["augmentation"])
            for net, (optimizer, scheduler), states in zip(nets, optimizers, saved["nets"]):
                net.load_state_dict(states["net"])
                optimizer.load_state_dict(states["optimizer"])
                scheduler.load_state_dict(states["scheduler"])
        batches_per_epoch = recipe.total_steps(len(images)) // recipe.epochs
        with progress_bar("replay", total=recipe.total_steps(len(images))) as advance:
            for _ in range(len(epoch_logs) * batches_per_epoch):
                advance()
            for epoch in range(len(epoch_logs), recipe.epochs):
                log = []
                for number, index in enumerate(epoch_permutation(len(images), recipe.seed, epoch).split(recipe.batch_size)):
                    x, y = to_unit(images[index].to(ctx.device)), labels[index].to(ctx.device)
                    d = delta[index].to(ctx.device).requires_grad_(True)
                    replayed = ReplayedStep([{n: t.detach() for n, t in net.state_dict().items()} for net in nets],
                                            augmentation.get_state())
                    with accelerator.autocast():
                        loss, terms = uge_loss(ctx, x, (x + d).clamp(0, 1), y, index, epoch * batches_per_epoch + number,
                                               replayed=replayed)
                    delta[index] = _sign_step(loss, d, step_size, rho).cpu()
                    (x_seen,) = augment([x], recipe, augmentation)  # the recipe's step itself, on the clean batch
                    for net, (optimizer, scheduler) in zip(nets, optimizers):
                        optimizer.zero_grad(set_to_none=True)
                        F.cross_entropy(net(normalize(x_seen)), y).backward()
                        optimizer.step()
                        scheduler.step()
                    log.append({"loss": loss.item(), **terms})
                    advance(loss=loss.item(), **terms)
                epoch_logs.append(_mean_terms(log))
                saved = {
                    "delta": delta, "epoch_logs": epoch_logs, "augmentation": augmentation.get_state(),
                    "nets": [{"net": net.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
                             for net, (optimizer, scheduler) in zip(nets, optimizers)],
                }
                atomic_write(checkpoint, lambda partial: torch.save(saved, partial))
        finished.touch()
    else:
        # Polled rather than a collective barrier: the replay can outlast a process group's timeout (10 min for NCCL).
        while not finished.exists():
            time.sleep(5)
    saved = torch.load(checkpoint, weights_only=True)
    x_u = (to_unit(images) + saved["delta"]).clamp(0, 1)
    return x_u, {"first": saved["epoch_logs"][0], "last": saved["epoch_logs"][-1]}
