"""The lock method's unlock data: what turns a released image back into the exact source image, for the key holder.

For each protected row the release stores one `unlock` blob beside the image:

    blob = VERSION (1 byte) || nonce (12 bytes) || AES-256-GCM(key, nonce, plaintext, associated data)
    plaintext = length of `packed` (4 bytes, little endian) || packed || zero padding, the same size for every row
    packed = zlib(x - x_u as int8, or int16 for bounds above 127 levels, (C, H, W) order)

- **Exact**: x = x_u + (x - x_u) on every pixel, whatever clipping did to x_u.
- **Bound to its row**: the associated data is the sha256 of the row's released pixels (uint8 (C, H, W)), their
  shape and its label, so a blob moved to another row, an edited image or a changed label fails authentication.
  Rows may be reordered or filtered: a blob is bound to its row's content, not to its position.
- **No key, no information**: every blob of a release has the same length (the plaintext is padded to the longest
  row's), and AES-GCM output is indistinguishable from random bytes, so neither the bytes nor their length tell
  anything about the image or its class.
- **Deterministic**: the nonce is HMAC-SHA256(nonce key, associated data || plaintext), truncated to 96 bits (a
  synthetic IV, as in SIV mode): the same rows and key give the same release bytes, and two different plaintexts
  get different nonces except with probability ~2^-96 per pair, so a key reused across releases never reuses a
  nonce for different data.

Keys: HKDF-SHA256 of the 256-bit secret gives independent subkeys for the cipher, the nonces and the poison
(`LockKey`). The cipher and KDF are `cryptography`'s (a well-kept library), never hand-written.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from torch import Tensor

from .errors import UgeError
from .keyfile import KEY_BYTES, read_key_file

UNLOCK_COLUMN = "unlock"
VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
_LENGTH = struct.Struct("<I")


def _subkey(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"uge-hf lock v1 " + purpose).derive(secret)


@dataclass(frozen=True)
class LockKey:
    """A 256-bit secret and the subkeys derived from it (HKDF-SHA256, one `info` label per use)."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise UgeError(f"a key is {KEY_BYTES} bytes, got {len(self.secret)}")

    @property
    def fingerprint(self) -> str:
        """sha256 of the secret: names a key without revealing it."""
        return hashlib.sha256(self.secret).hexdigest()

    @property
    def cipher_key(self) -> bytes:
        return _subkey(self.secret, b"cipher")

    @property
    def nonce_key(self) -> bytes:
        return _subkey(self.secret, b"nonce")

    @property
    def poison_secret(self) -> bytes:
        """The poison's randomness (class codes, signs): independent of the cipher's key."""
        return _subkey(self.secret, b"poison")


def row_binding(pixels: np.ndarray, label: int) -> bytes:
    """The associated data binding a blob to its row: sha256 of the released uint8 pixels (C, H, W), shape and label."""
    digest = hashlib.sha256(b"uge-hf lock row v1")
    digest.update(struct.pack("<3I", *pixels.shape) + struct.pack("<q", int(label)))
    digest.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return digest.digest()


def pack_residuals(source: Tensor, protected: Tensor) -> list[bytes]:
    """zlib-compressed x - x_u per row, for uint8 (N, C, H, W) `source` and `protected` of the same shape.

    Each row is int8, or int16 when its own residual exceeds 127 levels: decided per row, so a row's bytes do not
    depend on which rows share its chunk.
    """
    packed = []
    for row in (source.to(torch.int16) - protected.to(torch.int16)).numpy():
        wide = bool(np.abs(row).max(initial=0) > 127)
        packed.append(zlib.compress((b"\x02" if wide else b"\x01") + row.astype(np.int16 if wide else np.int8).tobytes(), 9))
    return packed


def seal(key: LockKey, packed: list[bytes], bindings: list[bytes], padded_length: int | None = None) -> list[bytes]:
    """One blob per row (module docstring), every blob the same length.

    `padded_length`: the plaintext size (default: the longest `packed` + 4); it must hold every row.
    """
    longest = max((len(p) for p in packed), default=0) + _LENGTH.size
    size = longest if padded_length is None else padded_length
    if size < longest:
        raise UgeError(f"unlock data of {longest - _LENGTH.size} bytes does not fit a padded length of {size}")
    cipher, nonce_key = AESGCM(key.cipher_key), key.nonce_key
    blobs = []
    for body, binding in zip(packed, bindings, strict=True):
        plaintext = _LENGTH.pack(len(body)) + body + bytes(size - _LENGTH.size - len(body))
        nonce = hmac.new(nonce_key, binding + plaintext, hashlib.sha256).digest()[:NONCE_BYTES]
        blobs.append(bytes([VERSION]) + nonce + cipher.encrypt(nonce, plaintext, binding))
    return blobs


def open_blob(cipher: AESGCM, blob: bytes, binding: bytes, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """The residual x - x_u (int16 (C, H, W)) in `blob`; UgeError naming `where` if the key or the row is wrong."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[0] != VERSION:
        raise UgeError(f"{where}: its unlock data is missing or not uge-hf lock data (version {VERSION})")
    nonce = bytes(blob[1 : 1 + NONCE_BYTES])
    try:
        plaintext = cipher.decrypt(nonce, bytes(blob[1 + NONCE_BYTES :]), binding)
    except InvalidTag:
        raise UgeError(f"{where}: the unlock data does not open: a wrong key, or the row's image, label or unlock "
                       "data was changed") from None
    (length,) = _LENGTH.unpack_from(plaintext)
    body = zlib.decompress(plaintext[_LENGTH.size : _LENGTH.size + length])
    dtype = {1: np.int8, 2: np.int16}[body[0]]
    return np.frombuffer(body[1:], dtype=dtype).astype(np.int16).reshape(shape)


def unlock_pixels(cipher: AESGCM, pixels: np.ndarray, label: int, blob: bytes, where: str) -> np.ndarray:
    """The source image x (uint8 (C, H, W)) of a released row: its pixels x_u (uint8 (C, H, W)), label and blob."""
    residual = open_blob(cipher, blob, row_binding(pixels, label), pixels.shape, where)
    source = pixels.astype(np.int16) + residual
    if source.min() < 0 or source.max() > 255:  # cannot happen for an authentic blob; guards a bug, not an attack
        raise UgeError(f"{where}: the unlocked pixels leave 0..255")
    return source.astype(np.uint8)


def load_lock_key(path: str | os.PathLike, num_classes: int | None = None) -> LockKey:
    """The `LockKey` in a key file or a private folder; UgeError if it is missing, not a lock key, or for other classes."""
    secret, data = read_key_file(path, "lock")
    made_for = data.get("num_classes")
    if made_for is not None and (not isinstance(made_for, int) or isinstance(made_for, bool)):  # a hand-edited "4"
        raise UgeError(f"the key {path} has num_classes {made_for!r}, not a whole number: it is not a uge-hf key file")
    if num_classes is not None and made_for not in (None, num_classes):
        raise UgeError(f"the key {path} was made for {made_for} classes; this dataset has {num_classes}")
    return LockKey(secret)
