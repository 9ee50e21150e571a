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

from ..config import SURROGATE_POISONS, ProtectConfig
from ..data import to_tensors
from ..errors import UgeError
from ..keyfile import KEY_FILE, key_file_bytes, new_secret
from ..lock import UNLOCK_COLUMN, LockKey, load_lock_key, pack_residuals, row_binding, seal, unlock_pixels
from ..poisons import apply_poison, poison
from ..progress import is_main_process, progress_bar
from ..specs import ModelSpec, init_sha256
from .base import MethodInput, MethodResult, chunk_rows



def protect(inputs: MethodInput) -> MethodResult:
    """Poison every protected split with one key (read from `config.key_file`, or drawn now) and seal the unlock data."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    config = inputs.config
    for name in config.splits:  # the release adds this column: say so now, not after poisoning every row
        if UNLOCK_COLUMN in inputs.splits[name].column_names:
            raise UgeError(f"the lock method adds a column {UNLOCK_COLUMN!r}, but split {name} already has one:"
                           " rename it in the source")
    class_names = inputs.fit.class_names
    num_classes = len(class_names)
    key = load_lock_key(config.key_file, num_classes) if config.key_file else LockKey(new_secret())
    poison_secret = key.poison_secret
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
                delta = _delta(config, poison_secret, images, labels, num_classes, start, surrogate)
                locked = apply_poison(images, delta)
                chunks.append(locked)
                packed[name] += pack_residuals(images, locked)
                bindings[name] += [row_binding(row, label) for row, label in zip(locked.numpy(), labels.tolist())]
                for _ in range(len(images)):
                    advance()
        protected[name] = torch.cat(chunks)
        sources[name] = tensors

    # one padded length for every row of every split: a blob's length tells nothing about its image or class
    padded = max((len(p) for rows in packed.values() for p in rows), default=0) + 4
    blobs = {name: seal(key, packed[name], bindings[name], padded) for name in config.splits}

    cipher, checked = AESGCM(key.cipher_key), 0  # the key holder's path, on every row, before anything is written
    for name in config.splits:
        source, locked = sources[name], protected[name]
        for index, (pixels, label, blob) in enumerate(zip(locked.numpy(), source.labels.tolist(), blobs[name])):
            if not (unlock_pixels(cipher, pixels, label, blob, f"{name} row {index}") == source.images[index].numpy()).all():
                raise UgeError(f"{name} row {index} does not unlock to its source image (a bug: please report it)")
            checked += 1

    result = MethodResult(protected=protected, authorized=[])
    result.columns = {name: {UNLOCK_COLUMN: blobs[name]} for name in config.splits}
    png_bytes = _mean_png_bytes(protected[config.splits[0]])
    result.card = {"lock": {
        "poison": config.lock.poison,
        **({"surrogate": config.lock.surrogate, "adversarial_steps": config.lock.adversarial_steps} if surrogate else {}),
        "unlock_column": UNLOCK_COLUMN,
        "cipher": "AES-256-GCM, HKDF-SHA256 subkeys, synthetic nonces, associated data = sha256(pixels, shape, label)",
        "key_sha256": key.fingerprint,
    }}
    blob_bytes = len(next(iter(blobs.values()))[0]) if checked else 0
    result.results = {"unlock": {
        "rows_checked": checked, "rows_exact": checked, "bytes_per_row": blob_bytes,
        "protected_png_bytes_per_row": round(png_bytes, 1),
        "ratio_to_png": round(blob_bytes / png_bytes, 3) if png_bytes else None,
    }}
    result.private_files[KEY_FILE] = key_file_bytes("lock", key.secret, num_classes=num_classes, poison=config.lock.poison)
    for spec in config.authorized:
        parsed = ModelSpec.parse(spec)
        # the authorization is the key: the network is any network; this one (public init) made the measurements
        result.authorized.append({
            "spec": spec, "arch": parsed.arch, "width": parsed.resolved_width, "seed": parsed.seed,
            "num_classes": num_classes, "init_sha256": init_sha256(spec, num_classes),
            "weights": None, "private": False, "input_stage": "unlock",
        })
    return result


def _delta(config: ProtectConfig, secret: bytes, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
           first_row: int, surrogate: torch.nn.Module | None) -> torch.Tensor:
    """The poison of rows first_row.. of a split: int16 (N, C, H, W), |delta| <= the bound (before clipping)."""
    shape, bound = tuple(images.shape[1:]), config.pixel_bound
    if surrogate is None:
        return poison(config.lock.poison, secret, labels, num_classes, shape, bound, first_row)
    from ..adversarial import targeted_adversarial

    return targeted_adversarial(surrogate, images, labels, num_classes, bound, secret, first_row,
                                steps=config.lock.adversarial_steps, device=_device())


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _mean_png_bytes(images: torch.Tensor, sample: int = 512) -> float:
    """Mean PNG size of (up to `sample` evenly spaced) uint8 (N, C, H, W) images, as the release stores them."""
    import io

    from ..data import to_pil_images

    if not len(images):
        return 0.0
    step = max(1, len(images) // sample)
    sizes = []
    for image in to_pil_images(images[::step][:sample]):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        sizes.append(len(buffer.getvalue()))
    return sum(sizes) / len(sizes)
