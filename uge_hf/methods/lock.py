"""The lock method: key holders recover the exact source images; everyone else gets an availability poison.

x_u = clip(x + delta, 0, 255) with |delta| <= the bound (`uge_hf.poisons`, model-free: one pass over the images; or
`uge_hf.adversarial`, after training a surrogate on the clean rows), and beside every protected image an `unlock` blob: x - x_u, compressed, padded to one length for the whole
release, encrypted with AES-256-GCM and bound to its row's content (`uge_hf.lock`). With the key,
`uge_hf.unlock(release, key=...)` returns the source images bit for bit; without it the blobs are random bytes.
This is a learnability lock (Peng et al., ICLR 2022) whose inversion is exact by construction. The key goes to the
private folder (`key.json`), never into the release; the card holds its sha256.
"""

from __future__ import annotations

import torch
from datasets import Value

from ..data import to_tensors
from ..errors import UgeError
from ..keyfile import KEY_FILE, key_file_bytes, new_secret
from ..lock import UNLOCK_COLUMN, LockKey, load_lock_key, pack_residuals, row_binding, seal, unlock_pixels
from ..poisons import apply_poison, poison
from ..progress import is_main_process, progress_bar
from ..specs import ModelSpec, init_sha256
from ..config import SURROGATE_POISONS, ProtectConfig
from .base import MethodInput, MethodResult, chunk_rows

PNG_SAMPLE = 512  # rows of the first protected split whose mean PNG size the card reports (evenly spaced)

def protect(inputs: MethodInput) -> MethodResult:
    """Poison every protected split with one key (read from `config.key_file`, or drawn now) and seal the unlock data."""
    config = inputs.config
    for name in config.splits:  # the release adds this column: say so now, not after poisoning every row
        check_no_unlock_column(inputs.splits[name].column_names, name)
    class_names = inputs.fit.class_names
    num_classes = len(class_names)
    key = load_lock_key(config.key_file, num_classes) if config.key_file else LockKey(new_secret())
    surrogate = None
    if config.lock.poison in SURROGATE_POISONS:  # trained once, on the first protected split's clean rows
        from ..adversarial import train_surrogate

        surrogate = train_surrogate(config.lock.surrogate, inputs.fit.images, inputs.fit.labels, num_classes,
                                    config.recipe, _device())

    protected, packed, bindings, sources = {}, {}, {}, {}
    for name in config.splits:
        tensors = inputs.fit if name == config.splits[0] else to_tensors(
            inputs.splits[name], inputs.image_column, inputs.label_column, inputs.fit.image_size, class_names,
            progress=is_main_process(),
        )
        chunks, packed[name], bindings[name] = [], [], []
        with progress_bar(f"locking {name}", total=len(tensors.images)) as advance:
            rows = chunk_rows(tuple(tensors.images.shape[2:]))  # bounds memory; the bytes do not depend on it
            if surrogate is not None:  # whole adversarial batches per chunk, so the bytes do not depend on it either
                from ..adversarial import BATCH_ROWS

                rows = max(BATCH_ROWS, rows // BATCH_ROWS * BATCH_ROWS)
            for start in range(0, len(tensors.images), rows):
                images, labels = tensors.images[start : start + rows], tensors.labels[start : start + rows]
                locked, chunk_packed, chunk_bindings = lock_rows(images, labels, key, config, num_classes, start,
                                                                   surrogate)
                chunks.append(locked)
                packed[name] += chunk_packed
                bindings[name] += chunk_bindings
                for _ in range(len(images)):
                    advance()
        protected[name] = torch.cat(chunks)
        sources[name] = tensors

    # one padded length for every row of every split: a blob's length tells nothing about its image or class
    padded = padded_length(max((len(p) for rows in packed.values() for p in rows), default=0))
    blobs = {name: seal(key, packed[name], bindings[name], padded) for name in config.splits}

    checked = 0  # the key holder's path, on every row, before anything is written
    for name in config.splits:
        checked += check_unlocks(key, protected[name], sources[name].labels, sources[name].images, blobs[name], name)

    result = MethodResult(protected=protected, authorized=[])
    result.columns = {name: {UNLOCK_COLUMN: blobs[name]} for name in config.splits}
    first = protected[config.splits[0]]
    png_bytes = mean_png_bytes(first[png_sample_rows(len(first))])
    result.card = lock_block(config, key)
    result.results = unlock_results(checked, len(next(iter(blobs.values()))[0]) if checked else 0, png_bytes)
    result.authorized, result.private_files = lock_outputs(config, key, num_classes)
    return result


def check_no_unlock_column(columns: list[str], name: str) -> None:
    """UgeError when split `name` already has the column the lock method adds."""
    if UNLOCK_COLUMN in columns:
        raise UgeError(f"the lock method adds a column {UNLOCK_COLUMN!r}, but split {name} already has one:"
                       " rename it in the source")


def lock_rows(images: torch.Tensor, labels: torch.Tensor, key: LockKey, config: ProtectConfig, num_classes: int,
              first_row: int, surrogate: torch.nn.Module | None = None) -> tuple[torch.Tensor, list[bytes], list[bytes]]:
    """Rows first_row .. first_row + N - 1 of a split, locked: (x_u uint8 (N, C, H, W), each row's packed residual
    (`lock.pack_residuals`), each row's binding (`lock.row_binding`)). A function of the key and the row indices only,
    so chunks, shards and processes give the same bytes (a surrogate poison: also of `surrogate`, and chunks of whole
    `adversarial.BATCH_ROWS` batches)."""
    shape = tuple(images.shape[1:])
    if surrogate is None:
        delta = poison(config.lock.poison, key.poison_secret, labels, num_classes, shape, config.pixel_bound, first_row)
    else:
        from ..adversarial import targeted_adversarial

        delta = targeted_adversarial(surrogate, images, labels, num_classes, config.pixel_bound, key.poison_secret,
                                     first_row, steps=config.lock.adversarial_steps, device=_device())
    locked = apply_poison(images, delta)
    bindings = [row_binding(row, label) for row, label in zip(locked.numpy(), labels.tolist())]
    return locked, pack_residuals(images, locked), bindings


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def padded_length(longest_packed: int) -> int:
    """The plaintext size of every blob of a release whose longest packed residual is `longest_packed` bytes."""
    return longest_packed + 4  # the length prefix (lock._LENGTH)


def check_unlocks(key: LockKey, locked: torch.Tensor, labels: torch.Tensor, source: torch.Tensor, blobs: list[bytes],
                  name: str, first_row: int = 0) -> int:
    """Open every blob as the key holder will and compare with the source rows; the number of rows checked.

    Raises UgeError naming split and row when one does not unlock to its source image (a bug)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    cipher = AESGCM(key.cipher_key)
    for index, (pixels, label, blob) in enumerate(zip(locked.numpy(), labels.tolist(), blobs, strict=True)):
        row = first_row + index
        if not (unlock_pixels(cipher, pixels, label, blob, f"{name} row {row}") == source[index].numpy()).all():
            raise UgeError(f"{name} row {row} does not unlock to its source image (a bug: please report it)")
    return len(blobs)


def lock_block(config: ProtectConfig, key: LockKey) -> dict:
    """The card's `lock:` block."""
    return {"lock": {
        "poison": config.lock.poison,
        **({"surrogate": config.lock.surrogate, "adversarial_steps": config.lock.adversarial_steps}
           if config.lock.poison in SURROGATE_POISONS else {}),
        "unlock_column": UNLOCK_COLUMN,
        "cipher": "AES-256-GCM, HKDF-SHA256 subkeys, synthetic nonces, associated data = sha256(pixels, shape, label)",
        "key_sha256": key.fingerprint,
    }}


def unlock_results(checked: int, blob_bytes: int, png_bytes: float) -> dict:
    """The card's `unlock:` measurements: rows checked, bytes per blob, mean PNG size of the released images."""
    return {"unlock": {
        "rows_checked": checked, "rows_exact": checked, "bytes_per_row": blob_bytes,
        "protected_png_bytes_per_row": round(png_bytes, 1),
        "ratio_to_png": round(blob_bytes / png_bytes, 3) if png_bytes else None,
    }}


def lock_outputs(config: ProtectConfig, key: LockKey, num_classes: int) -> tuple[list[dict], dict[str, bytes]]:
    """The card's authorized entries (the key is the authorization: any network) and the private folder's key file."""
    private_files = {KEY_FILE: key_file_bytes("lock", key.secret, num_classes=num_classes, poison=config.lock.poison)}
    authorized = []
    for spec in config.authorized:
        parsed = ModelSpec.parse(spec)
        # the authorization is the key: the network is any network; this one (public init) made the measurements
        authorized.append({
            "spec": spec, "arch": parsed.arch, "width": parsed.resolved_width, "seed": parsed.seed,
            "num_classes": num_classes, "init_sha256": init_sha256(spec, num_classes),
            "weights": None, "private": False, "input_stage": "unlock",
        })
    return authorized, private_files


def png_sample_rows(rows: int, sample: int = PNG_SAMPLE) -> list[int]:
    """The rows (of `rows`) whose PNG sizes the card's mean is taken over: up to `sample`, evenly spaced."""
    step = max(1, rows // sample)
    return list(range(0, rows, step))[:sample]


def mean_png_bytes(images: torch.Tensor) -> float:
    """Mean PNG size of uint8 (N, C, H, W) images, as the release stores them (0 for none)."""
    return sum(png_sizes(images)) / len(images) if len(images) else 0.0


def png_sizes(images: torch.Tensor) -> list[int]:
    """The PNG size in bytes of each uint8 (N, C, H, W) image, encoded as the release encodes it."""
    import io

    from ..data import to_pil_images

    sizes = []
    for image in to_pil_images(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        sizes.append(len(buffer.getvalue()))
    return sizes


class LockRows:
    """The lock method row by row, for the shard writer (`uge_hf.sharded`).

    Every blob of a release is padded to one length, the longest packed residual of any protected row, which is
    known only after a pass over every row: the writer first calls `longest` on each shard (no encryption, no PNG)
    and gives the result as `longest=`. Rows are then a function of the key and their row index only, so the release
    is byte for byte the in-memory writer's.
    """

    columns = {UNLOCK_COLUMN: Value("binary")}  # the column added to every split (null where nothing was protected)
    needs_longest = True

    @staticmethod
    def draw_key(config: ProtectConfig, num_classes: int, image_size: tuple[int, int]) -> bytes:
        """The run's key file bytes: `config.key_file`'s key, or a new one; UgeError when it is not a lock key."""
        key = load_lock_key(config.key_file, num_classes) if config.key_file else LockKey(new_secret())
        return key_file_bytes("lock", key.secret, num_classes=num_classes, poison=config.lock.poison)

    @staticmethod
    def load_key(path, num_classes: int) -> LockKey:
        return load_lock_key(path, num_classes)

    def __init__(self, config: ProtectConfig, key: LockKey, image_size: tuple[int, int], num_classes: int,
                 first_split_rows: int | None = None, longest: int | None = None):
        self.config, self.key, self.num_classes = config, key, num_classes
        self.padded = padded_length(longest) if longest is not None else None
        # the rows of the first protected split whose PNG sizes the card's mean is taken over, as the in-memory writer
        self.png_rows = set(png_sample_rows(first_split_rows)) if first_split_rows is not None else set()

    def longest(self, images: torch.Tensor, labels: torch.Tensor, first_row: int) -> int:
        """The longest packed residual (bytes) of rows first_row .. first_row + N - 1: the first pass."""
        _, packed, _ = lock_rows(images, labels, self.key, self.config, self.num_classes, first_row)
        return max((len(p) for p in packed), default=0)

    def protect(self, images: torch.Tensor, labels: torch.Tensor, first_row: int, split: str
                ) -> tuple[torch.Tensor, dict[str, list], dict]:
        """Rows first_row .. first_row + N - 1 of `split`: locked images, their `unlock` blobs (each checked to open to
        its source row), and their statistics."""
        locked, packed, bindings = lock_rows(images, labels, self.key, self.config, self.num_classes, first_row)
        blobs = seal(self.key, packed, bindings, self.padded)
        checked = check_unlocks(self.key, locked, labels, images, blobs, split, first_row)
        sampled = [i for i in range(len(images)) if first_row + i in self.png_rows] \
            if split == self.config.splits[0] else []
        return locked, {UNLOCK_COLUMN: blobs}, {
            "rows_checked": checked, "blob_bytes": len(blobs[0]) if blobs else 0,
            "png_sizes": png_sizes(locked[sampled]) if sampled else []}

    @staticmethod
    def merge(stats: list[dict]) -> dict:
        return {"rows_checked": sum(s["rows_checked"] for s in stats),
                "blob_bytes": max((s["blob_bytes"] for s in stats), default=0),
                "png_sizes": [size for s in stats for size in s["png_sizes"]]}

    def finish(self, stats: dict) -> tuple[dict, dict, list[dict], dict[str, bytes]]:
        """From the merged statistics of every protected row: the card's `lock:` block, its measurements, the
        authorized entries and the private files."""
        sizes = stats["png_sizes"]
        results = unlock_results(stats["rows_checked"], stats["blob_bytes"], sum(sizes) / len(sizes) if sizes else 0.0)
        return lock_block(self.config, self.key), results, *lock_outputs(self.config, self.key, self.num_classes)


ROWS = LockRows  # what the shard writer (uge_hf.sharded) protects rows with
