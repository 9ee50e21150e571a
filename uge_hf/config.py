"""`ProtectConfig`: every knob of a protection run, shared by the Python API, the CLI and the release card.

The paper's hyper-parameter tables are not available to us; where a default is our own choice the comment
says why. A config is saved in the release (`uge_config.json` and the card's YAML) so a run can be repeated.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from .errors import UgeError

AUGMENTATIONS = ("crop+flip", "none")
SCHEDULES = ("cosine", "constant")
SIGNS = ("image", "random", "fixed")  # the keyed texture's signs (`uge_hf.key.SIGN_MODES` holds the same, for its own check)
SOLVERS = ("generator", "per-sample", "hybrid", "replay")
GENERATOR_FREE_SOLVERS = ("per-sample", "replay")  # solvers that optimise x_u directly and train no G
MIXED_PRECISION = ("no", "fp16", "bf16")
METHODS = ("gradient-matching", "keyed", "lock")  # uge_hf.methods holds one module each
KEY_METHODS = ("keyed", "lock")  # methods whose authorization is a key file in the private folder
# the lock method's poisons (`uge_hf.poisons` builds them; defined here so the CLI's choices need no torch)
POISONS = ("texture", "texture-grey-apart", "texture-luma", "blocks", "blocks-colour", "autoregressive", "texture+blocks",
           "texture+autoregressive", "adversarial")
SURROGATE_POISONS = ("adversarial",)  # a surrogate is trained on the clean rows first (`uge_hf.adversarial`)
MODEL_FREE_POISONS = tuple(kind for kind in POISONS if kind not in SURROGATE_POISONS)  # `uge_hf.poisons.poison`


def knob(default=dataclasses.MISSING, help: str = "", *, factory=dataclasses.MISSING, choices: tuple[str, ...] | None = None,
         flags: tuple[str, ...] = ()):
    """A config field whose comment is its `help` (shown by `uge-hf protect --help`, which is generated from it).

    `choices`: the values allowed (an option with a fixed set); `flags`: extra option names kept for the command line
    (e.g. `--trajectory-epochs` for `recipe.epochs`), the first one replacing the generated `--field-name`.
    """
    metadata = {"help": help, "choices": choices, "flags": flags}
    return field(default=default, default_factory=factory, metadata=metadata)


@dataclass
class Recipe:
    """How the authorized network is trained: the protector's trajectory and the authorized user follow it.

    The card tells authorized users to train with exactly this recipe from the released initial weights,
    because L_gm matches gradients along the trajectory this recipe produces on the clean data.
    """

    epochs: int = knob(30, "passes over the data; 30 brings CIFAR ResNet-18 close to convergence with this schedule",
                       flags=("--recipe-epochs", "--trajectory-epochs"))
    batch_size: int = knob(128, "samples per SGD step")
    lr: float = knob(0.05, "peak learning rate of SGD")
    momentum: float = knob(0.9, "SGD momentum")
    weight_decay: float = knob(5e-4, "L2 penalty, the CIFAR standard")
    schedule: str = knob("cosine", "learning-rate schedule over all steps", choices=SCHEDULES)
    augmentation: str = knob("crop+flip", "random crop (pad 1/8 of the side) + horizontal flip, or none", choices=AUGMENTATIONS)
    seed: int = knob(0, "data order and augmentation seed (the initialisation seed is in the model spec)")

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise UgeError("the recipe needs epochs >= 1 and batch_size >= 1")
        if not self.lr > 0:
            raise UgeError(f"the recipe's learning rate must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise UgeError(f"unknown lr schedule {self.schedule!r}: use 'cosine' or 'constant'")
        if self.augmentation not in AUGMENTATIONS:
            raise UgeError(f"unknown augmentation {self.augmentation!r}: use one of {', '.join(AUGMENTATIONS)}")

    def total_steps(self, num_samples: int) -> int:
        """SGD steps of the whole run on `num_samples` rows (the last batch of an epoch may be short)."""
        return self.epochs * math.ceil(num_samples / self.batch_size)


def pixel_bound(rho: float) -> int:
    """The L-inf bound in 8-bit levels that rho (on [0, 1] pixels) allows: floor(rho * 255), robust to float noise."""
    return math.floor(rho * 255 + 1e-9)


def _nested(cls, value, name: str):
    """A nested settings dataclass from itself or a dict, unknown fields named in a UgeError."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise UgeError(f"{name} must be a mapping of its fields, got {value!r}")
    unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UgeError(f"unknown {name} fields: {', '.join(unknown)} (it has {', '.join(f.name for f in dataclasses.fields(cls))})")
    return cls(**value)


@dataclass
class KeyedSettings:
    """The keyed method's signal (`uge_hf.key`): a class texture in a secret subspace S, tiled over the image.

    Defaults chosen on a validation slice of CIFAR-10 train rows (`benchmarks/keyed/sweep.py`,
    `benchmarks/results/keyed_sweep.md`).
    """

    tile: int = knob(8, "side in pixels of the square regions S is tiled over (the texture's period)")
    groups: int = knob(12, "dimensions of S per region (its C x (tile / grain)^2 cells split into this many +-1 patterns)")
    grain: int = knob(4, "side in pixels of the cells that share a group and a sign (4: a coarse, 4x4-block texture)")
    signs: str = knob("image", "image: one sign per image (no class mean for a linear attack, the texture stays"
                      " periodic); random: a sign per image and region; fixed: none (the class mean is the texture itself)",
                      choices=SIGNS)
    amplitude: int | None = knob(None, "largest |delta| in 8-bit levels; None: the whole bound, floor(rho * 255)")
    pull: int = knob(0, "levels T(x) moves pixels near 0/255 inward so they can carry +-delta. 0 (T = identity):"
                     " K(x_u) = K(x) exactly, so the authorized network trains bit for bit as on the clean data; the"
                     " shortcut was as strong (validation)")

    def __post_init__(self) -> None:
        if self.tile < 1 or self.groups < 1:
            raise UgeError(f"keyed.tile and keyed.groups must be >= 1, got {self.tile} and {self.groups}")
        if self.grain < 1 or self.tile % self.grain:
            raise UgeError(f"keyed.grain must divide keyed.tile ({self.tile}), got {self.grain}")
        from .key import KeyGeometry

        cells = KeyGeometry(3, self.tile, self.groups, self.grain).cells
        if self.groups > cells:
            raise UgeError(f"keyed.groups must be at most 3 * (tile / grain)^2 = {cells}, got {self.groups}")
        if self.signs not in SIGNS:
            raise UgeError(f"keyed.signs must be one of {', '.join(SIGNS)}, got {self.signs!r}")
        for name, low in (("amplitude", 1), ("pull", 0)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and low <= value <= 255):
                raise UgeError(f"keyed.{name} must be in {low}..255 levels, got {value}")


@dataclass
class LockSettings:
    """The lock method's poison (`uge_hf.poisons`); the key holder undoes it exactly (`uge_hf.lock`).

    Default chosen on a validation slice of CIFAR-10 train rows (`benchmarks/lock/poison_sweep.py`,
    `benchmarks/results/lock_sweep.md`).
    """

    # texture-grey-apart: on the validation slice as strong as `texture` for the CNN and ResNet-18 and the only
    # design a grayscale copy did not undo (0.45x vs 0.79x of clean)
    poison: str = knob("texture-grey-apart", "the availability poison under the lock (uge_hf.poisons; adversarial trains"
                       " a surrogate first: uge_hf.adversarial)", choices=POISONS)
    # another init than any network the sweep scored, so its measurements are of transfer, not of the surrogate itself
    surrogate: str = knob("resnet18-w16-seed7", "adversarial poisons: the surrogate network ARCH[-wWIDTH]-seedN, trained"
                          " on the clean rows with the recipe")
    # 20 steps of 1.5 levels: the validation sweep's setting (benchmarks/lock/poison_sweep.py)
    adversarial_steps: int = knob(20, "adversarial poisons: signed-gradient steps per row")

    def __post_init__(self) -> None:
        if self.poison not in POISONS:
            raise UgeError(f"lock.poison must be one of {', '.join(POISONS)}, got {self.poison!r}")
        if not (isinstance(self.adversarial_steps, int) and self.adversarial_steps >= 1):
            raise UgeError(f"lock.adversarial_steps must be an integer >= 1, got {self.adversarial_steps!r}")
        from .specs import ModelSpec  # parsing validates the spec with its own clear message

        self.surrogate = str(ModelSpec.parse(self.surrogate))


@dataclass
class ProtectConfig:
    """Everything `uge_hf.protect` needs besides the dataset. Validated on construction."""

    method: str = knob("keyed", "keyed (the authorized network's secret key stage removes the perturbation exactly;"
                       " the default since it met the authorized target and beat the paper's method on every hacker"
                       " measured), lock (the key holder recovers the exact images; the poison is free) or"
                       " gradient-matching (the paper's UGE)", choices=METHODS)
    authorized: list[str] = knob(help="authorized network ARCH[-wWIDTH]-seedN; repeat for several",
                                 factory=lambda: ["resnet18-seed0"])
    keyed: KeyedSettings = knob(help="the keyed method's signal", factory=KeyedSettings)
    lock: LockSettings = knob(help="the lock method's poison", factory=LockSettings)
    key_file: str | None = knob(None, "keyed, lock: reuse this key (an OUTPUT.private folder or its key.json) instead"
                                " of drawing one", flags=("--key-file", "--key"))
    encoder: str = knob("openai/clip-vit-base-patch32", "CLIP Hub id or local path, or surrogate")
    encoder_revision: str | None = knob(None, "Hub revision of the CLIP checkpoint (None: the default branch)")
    rho: float = knob(0.04, "L-inf bound of the perturbation on [0, 1] pixels (the paper's value)")
    seed: int = knob(0, "seeds the generator's init, its data order and the checkpoint sampling")
    recipe: Recipe = knob(help="the authorized training recipe (also the trajectory's)", factory=Recipe)
    solver: str = knob("generator", "generator (the paper's G), per-sample (optimise each x_u), hybrid (G, then refine"
                       " per sample), replay (optimise each x_u while re-running the authorized recipe, L_gm matched at"
                       " its exact steps)", choices=SOLVERS)
    per_sample_steps: int = knob(10, "sign-gradient steps per batch of the per-sample / hybrid solver (replay: one per epoch)")
    per_sample_step_size: float | None = knob(None, "L-inf step of the per-sample, hybrid and replay solvers; None: rho / 4")
    generator_epochs: int = knob(10, "passes over the protected split while training G")
    batch_size: int = knob(128, "per-process batch while training G")
    generator_lr: float = knob(1e-3, "Adam learning rate of G")
    generator_channels: int = knob(32, "base width of G")
    generator_blocks: int = knob(4, "residual blocks of G")
    lambda_gm: float = knob(1.0, "weight of L_gm (the paper fixes it at 1 and weighs the others)")
    lambda_fd: float = knob(1.0, "weight of L_fd")
    lambda_ud: float = knob(0.5, "weight of L_ud")
    triplet_margin: float = knob(2.0, "alpha of L_fd's triplet term (squared distance of unit vectors): 2 = until cos <= 0")
    omega: float = knob(0.1, "weight of the KL term inside L_ud; small so the CE keeps x_u right for the authorized net")
    undistill_hacker: str = knob("cnn-seed1", "the random, fixed hacker network of L_ud")
    surrogate_epochs: int = knob(10, "training epochs of the surrogate encoder (encoder=surrogate only)")
    splits: list[str] = knob(help="split(s) to protect; repeat for several (G is trained on the first)",
                             factory=lambda: ["train"], flags=("--split", "--splits"))
    keep_other_splits: bool = knob(True, "copy the other splits unchanged into the release")
    image_column: str | None = knob(None, "image column; None: the column with an Image feature")
    label_column: str | None = knob(None, "label column; None: the ClassLabel column (or one named like label)")
    image_size: int | None = knob(None, "square training resolution; None: the most common image size, unchanged")
    mixed_precision: str | None = knob(None, "gradient-matching: Accelerate's mixed precision for G's training; None:"
                                       " Accelerate's own configuration (ACCELERATE_MIXED_PRECISION, set by `accelerate"
                                       " launch`, else `accelerate config`'s default file, else no); the card records"
                                       " the value used", choices=MIXED_PRECISION)
    checkpoint_every: int = knob(200, "G's training state is saved every this many steps (for resume)")
    release_generator: bool = knob(False, "ship G's weights; off because G lets anyone make (x, x_u) pairs to undo it")
    publish_authorized: bool = knob(False, "gradient-matching: publish the authorized init weights in the release"
                                    " (reproduction studies). Off: they come from a secret init seed and go to"
                                    " OUTPUT.private/ (the card holds their sha256); keyed: always private")
    num_shards: int | None = knob(None, "parquet shards per split; None: about 500 MB of images per shard")
    shard_rows: int | None = knob(None, "keyed, lock: protect and write the release shard by shard, this many rows per"
                                  " parquet shard (memory: one shard; a killed run resumes per shard; torchrun /"
                                  " accelerate launch ranks share the shards, same bytes as one process); needed for a"
                                  " streaming source (IterableDataset). None: each split whole in memory")

    def __post_init__(self) -> None:
        self.recipe = _nested(Recipe, self.recipe, "recipe")
        self.keyed = _nested(KeyedSettings, self.keyed, "keyed")
        self.lock = _nested(LockSettings, self.lock, "lock")
        if self.method not in METHODS:
            raise UgeError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.key_file is not None and self.method not in KEY_METHODS:
            raise UgeError(f"a key file only applies to the {' and '.join(KEY_METHODS)} methods (--method)")
        if self.publish_authorized and self.method in KEY_METHODS:
            raise UgeError(f"the {self.method} method's authorization is its key, which is never published: drop publish_authorized")
        if isinstance(self.authorized, str):
            self.authorized = [self.authorized]
        if isinstance(self.splits, str):
            self.splits = [self.splits]
        self.splits = list(dict.fromkeys(self.splits))  # a split named twice is protected once
        if not self.authorized:
            raise UgeError("give at least one authorized model spec, e.g. resnet18-seed0")
        from .specs import ModelSpec  # parsing validates each spec with its own clear message

        self.authorized = [str(ModelSpec.parse(spec)) for spec in self.authorized]
        self.undistill_hacker = str(ModelSpec.parse(self.undistill_hacker))
        if not (isinstance(self.rho, (int, float)) and 0 < self.rho <= 1 and math.isfinite(self.rho)):
            raise UgeError(f"rho must be in (0, 1] (an L-inf bound on [0, 1] pixels), got {self.rho}")
        if self.pixel_bound < 1:
            raise UgeError(f"rho={self.rho} is below one 8-bit pixel level (1/255): the release could not differ")
        if self.method == "keyed" and self.keyed.pull > self.pixel_bound:
            raise UgeError(f"keyed.pull ({self.keyed.pull}) may not exceed the bound of {self.pixel_bound} levels")
        for name in ("generator_epochs", "batch_size", "generator_channels", "checkpoint_every", "surrogate_epochs"):
            if getattr(self, name) < 1:
                raise UgeError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lambda_gm", "lambda_fd", "lambda_ud", "triplet_margin", "omega"):
            if getattr(self, name) < 0:
                raise UgeError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lambda_gm == self.lambda_fd == self.lambda_ud == 0:
            raise UgeError("every loss weight is 0, so there is nothing to optimise: set lambda_gm, lambda_fd or lambda_ud > 0")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise UgeError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}")
        if self.image_size is not None and self.image_size < 16:
            raise UgeError(f"image_size must be >= 16 pixels, got {self.image_size}")
        if not self.splits:
            raise UgeError("give at least one split to protect")
        if self.solver not in SOLVERS:
            raise UgeError(f"unknown solver {self.solver!r}: use one of {', '.join(SOLVERS)}")
        if self.solver in GENERATOR_FREE_SOLVERS and len(self.splits) > 1:
            raise UgeError(f"the {self.solver} solver protects one split (it has no generator for the others)")
        if self.solver in GENERATOR_FREE_SOLVERS and self.release_generator:
            raise UgeError(f"the {self.solver} solver trains no generator to release")
        if self.shard_rows is not None:
            if self.shard_rows < 1:
                raise UgeError(f"shard_rows must be >= 1, got {self.shard_rows}")
            if self.method not in ("keyed", "lock"):
                raise UgeError(f"shard_rows (the shard-by-shard writer) applies to the per-row methods keyed and lock,"
                               f" not {self.method}, which trains on the whole split first")
            if self.method == "lock" and self.lock.poison in SURROGATE_POISONS:
                raise UgeError(f"the {self.lock.poison} poison trains a surrogate on the whole split first: drop"
                               " shard_rows (and streaming), or choose a model-free lock.poison")
            if self.num_shards is not None:
                raise UgeError("give shard_rows or num_shards, not both: shard_rows fixes the shard layout by rows")
        if self.per_sample_steps < 1:
            raise UgeError(f"per_sample_steps must be >= 1, got {self.per_sample_steps}")

    @property
    def pixel_bound(self) -> int:
        """The bound in 8-bit levels that every released pixel obeys: floor(rho * 255)."""
        return pixel_bound(self.rho)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def public_dict(self) -> dict:
        """`to_dict` without what must not leave this machine (the key file's path), for the release."""
        return {**self.to_dict(), "key_file": None}

    @classmethod
    def from_dict(cls, values: dict) -> ProtectConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UgeError(f"unknown config fields: {', '.join(unknown)}")
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
