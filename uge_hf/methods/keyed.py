"""The keyed method: the authorized network is backbone(K(x)); the perturbation lies exactly in K's null space.

No network is trained: a release costs one pass over the images (`uge_hf.key.protect_keyed`, module docstring there
for the construction). The key is the authorization: it goes to the private folder, never into the release; the
card carries the sha256 of the authorized weights (key stage + backbone initialisation) so a user can check them.
"""

from __future__ import annotations

import hashlib

import torch

from ..card import AuthorizedEntry
from ..data import to_tensors
from ..errors import UgeError
from ..authorized import authorized_weights
from ..key import KEY_FILE, KeyGeometry, SecretKey, key_json, load_secret_key, new_secret, protect_keyed
from ..config import ProtectConfig
from ..files import json_bytes
from ..progress import is_main_process, progress_bar
from .base import MethodInput, MethodResult, chunk_rows

# K(x_u) - K(T(x)) is exactly 0 in integer arithmetic; in float64 the projection leaves ~1e-12 levels.
INVARIANCE_TOLERANCE_LEVELS = 1e-6


def run_key(config: ProtectConfig, num_classes: int, image_size: tuple[int, int]) -> SecretKey:
    """The run's key: read from `config.key_file`, or drawn now; UgeError when it does not fit the settings."""
    settings = config.keyed
    geometry = KeyGeometry(3, settings.tile, settings.groups, settings.grain)
    key = load_secret_key(config.key_file, num_classes) if config.key_file else SecretKey(new_secret(), geometry, num_classes)
    if key.geometry != geometry:
        g = key.geometry
        raise UgeError(
            f"the key {config.key_file} is for tile {g.tile} / groups {g.groups} / grain {g.grain}, but the config asks"
            f" for tile {settings.tile} / groups {settings.groups} / grain {settings.grain}: use the key's settings"
        )
    if num_classes > 2 ** (settings.groups - 1):
        import warnings

        warnings.warn(f"{num_classes} classes but keyed.groups = {settings.groups} gives {2 ** (settings.groups - 1)}"
                      " distinct textures: some classes share one; raise keyed.groups", stacklevel=3)
    height, width = image_size
    if min(height, width) < settings.tile:
        raise UgeError(f"images of {height}x{width} are smaller than the key's {settings.tile}-pixel tile: set keyed.tile lower")
    return key


def protect(inputs: MethodInput) -> MethodResult:
    """Protect every protected split with one key (read from `config.key_file`, or drawn now)."""
    config = inputs.config
    settings = config.keyed
    num_classes = len(inputs.fit.class_names)
    key = run_key(config, num_classes, inputs.fit.image_size)
    stage = key.stage()

    protected, invariance, amplitudes = {}, [], []
    for name in config.splits:
        tensors = inputs.fit if name == config.splits[0] else to_tensors(
            inputs.splits[name], inputs.image_column, inputs.label_column, inputs.fit.image_size,
            inputs.fit.class_names, progress=is_main_process(),
        )
        chunks = []
        with progress_bar(f"protecting {name}", total=len(tensors.images)) as advance:
            rows = chunk_rows(tuple(tensors.images.shape[2:]))  # bounds memory; the bytes do not depend on it
            for start in range(0, len(tensors.images), rows):
                out = protect_keyed(
                    tensors.images[start : start + rows], tensors.labels[start : start + rows], key,
                    config.pixel_bound, first_row=start, signs=settings.signs, amplitude=settings.amplitude,
                    pull=settings.pull, stage=stage,
                )
                chunks.append(out.images)
                invariance.append(out.invariance_levels)
                amplitudes.append((out.mean_amplitude, len(out.images)))
                for _ in range(len(out.images)):
                    advance()
        protected[name] = torch.cat(chunks)

    invariance = torch.cat(invariance)
    over = int((invariance > INVARIANCE_TOLERANCE_LEVELS).sum())
    if over:
        raise UgeError(f"{over} protected images fail the invariance check K(x_u) = K(T(x)) (a bug: please report it)")
    result = MethodResult(protected=protected, authorized=[])
    result.card = key_block(config, key, inputs.fit.image_size)
    result.results = {
        "invariance": {"max_levels": float(invariance.max()), "tolerance_levels": INVARIANCE_TOLERANCE_LEVELS,
                       "images_checked": len(invariance), "images_over_tolerance": over},
        "mean_signal_levels": round(sum(a * n for a, n in amplitudes) / sum(n for _, n in amplitudes), 3),
    }
    result.authorized, result.private_files = key_outputs(config, key, stage, inputs.fit.image_size)
    return result


def key_block(config: ProtectConfig, key: SecretKey, image_size: tuple[int, int]) -> dict:
    """The card's `key:` block (the method's settings as used)."""
    settings = config.keyed
    height, width = image_size
    regions = (height // settings.tile) * (width // settings.tile)
    return {"key": {
        # anyone who reads these settings can apply K when S spans every cell: the authorization is then public
        "stage_is_public": key.geometry.stage_is_public,
        "tile": settings.tile, "groups": settings.groups, "grain": settings.grain, "dimensions": settings.groups * regions,
        "signs": settings.signs,
        "amplitude_levels": config.pixel_bound if settings.amplitude is None else min(settings.amplitude, config.pixel_bound),
        "pull_levels": settings.pull,
    }}


def key_outputs(config: ProtectConfig, key: SecretKey, stage, image_size: tuple[int, int]
                ) -> tuple[list[AuthorizedEntry], dict[str, bytes]]:
    """The card's authorized entries and the private folder's files: key.json, and per spec the authorized weights
    (key stage + backbone init) with their config.json."""
    settings, num_classes = config.keyed, key.num_classes
    authorized, private_files = [], {KEY_FILE: key_json(key)}
    for spec in config.authorized:
        weights = authorized_weights(spec, stage, num_classes)
        entry = AuthorizedEntry.from_spec(spec, num_classes, hashlib.sha256(weights).hexdigest(), private=True,
                                          input_stage="key")
        authorized.append(entry)
        private_files[f"authorized/{spec}/model.safetensors"] = weights
        private_files[f"authorized/{spec}/config.json"] = json_bytes({
            **entry.to_dict(), "method": "keyed", "tile": settings.tile, "groups": settings.groups, "grain": settings.grain,
            "image_size": list(image_size), "recipe": vars(config.recipe),
        })
    return authorized, private_files


class KeyedRows:
    """The keyed method row by row, for the shard writer (`uge_hf.sharded`): each row's output is a function of the
    key and its row index only, so shards, chunks and processes give the bytes of the in-memory writer."""

    columns: dict = {}  # columns the method adds to a protected split: none
    needs_longest = False  # no pass over every row before the first shard is written

    @staticmethod
    def draw_key(config: ProtectConfig, num_classes: int, image_size: tuple[int, int]) -> bytes:
        """The run's key file (`key.json` bytes): `config.key_file`'s key, or a new one; UgeError when it does not fit."""
        return key_json(run_key(config, num_classes, image_size))

    @staticmethod
    def load_key(path, num_classes: int) -> SecretKey:
        return load_secret_key(path, num_classes)

    def __init__(self, config: ProtectConfig, key: SecretKey, image_size: tuple[int, int], **_):
        self.config, self.key, self.image_size, self.stage = config, key, image_size, key.stage()

    def protect(self, images: torch.Tensor, labels: torch.Tensor, first_row: int, split: str
                ) -> tuple[torch.Tensor, dict[str, list], dict]:
        """Rows first_row .. first_row + N - 1 of `split` (uint8 (N, 3, H, W), int64 (N,)): protected images, no added
        column, and their statistics (summed over shards by `merge`)."""
        settings = self.config.keyed
        out = protect_keyed(images, labels, self.key, self.config.pixel_bound, first_row=first_row, signs=settings.signs,
                            amplitude=settings.amplitude, pull=settings.pull, stage=self.stage)
        return out.images, {}, {
            "rows": len(images), "invariance_max_levels": float(out.invariance_levels.max()),
            "images_over_tolerance": int((out.invariance_levels > INVARIANCE_TOLERANCE_LEVELS).sum()),
            "amplitude_sum": out.mean_amplitude * len(out.images)}

    @staticmethod
    def merge(stats: list[dict]) -> dict:
        return {"rows": sum(s["rows"] for s in stats),
                "invariance_max_levels": max(s["invariance_max_levels"] for s in stats),
                "images_over_tolerance": sum(s["images_over_tolerance"] for s in stats),
                "amplitude_sum": sum(s["amplitude_sum"] for s in stats)}

    def finish(self, stats: dict) -> tuple[dict, dict, list[AuthorizedEntry], dict[str, bytes]]:
        """From the merged statistics of every protected row: the card's `key:` block, its measurements, the
        authorized entries and the private files. UgeError when a row failed the invariance check (a bug)."""
        if stats["images_over_tolerance"]:
            raise UgeError(f"{stats['images_over_tolerance']} protected images fail the invariance check"
                           " K(x_u) = K(T(x)) (a bug: please report it)")
        results = {
            "invariance": {"max_levels": stats["invariance_max_levels"], "tolerance_levels": INVARIANCE_TOLERANCE_LEVELS,
                           "images_checked": stats["rows"], "images_over_tolerance": 0},
            "mean_signal_levels": round(stats["amplitude_sum"] / stats["rows"], 3),
        }
        authorized, private_files = key_outputs(self.config, self.key, self.stage, self.image_size)
        return key_block(self.config, self.key, self.image_size), results, authorized, private_files


ROWS = KeyedRows  # what the shard writer (uge_hf.sharded) protects rows with
