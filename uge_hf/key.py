"""The keyed method's two halves: a secret key's fixed input stage K, and a perturbation that lies exactly in ker(I - K).

The authorized network is `backbone(K(x))` with the fixed, non-trainable key stage

    K(x) = x - U U^T x,          U: orthonormal basis of a secret subspace S of image space,

applied to every [0, 1] image before augmentation (train and test). The released perturbation delta lies exactly
in S, so K(x_u) = K(T(x)): the authorized network trains on what it would see from the (pre-adjusted) clean data,
at every step of every trajectory, which is the paper's L_gm = 0 (Ye & Wang, CVPR 2024, Eq. 5-6) by construction.

S is built from tiles. The image is cut into `tile` x `tile` regions (a border that does not fill a region is left
alone), each region into `grain` x `grain` cells per channel; the key splits the cells of a region into `groups`
disjoint groups and gives every cell a sign, so group j of region r is the +-1 pattern b_j(r). S = span{b_j(r)}:
`groups` dimensions per region, the same patterns in every region. The groups are disjoint, so U is
b_j(r) / sqrt(|group j|) with no QR needed.

The perturbation is a class texture repeated across the image (an availability shortcut, as in synthetic and
autoregressive poisons, which survive crops because a texture is the same at every shift):

    delta = sum_r eta_r sum_j eps_{y,j} s_{r,j} b_j(r),

eps_y in {-1, +1}^groups: the class's code (from the key); eta_r in {-1, +1}: a sign per image (or per image and
region) from the key and the row index, so every class's mean perturbation is ~0 and a linear classifier finds
nothing to latch on; s_{r,j}: the largest integer amplitude <= `amplitude` levels that every pixel of the group can carry
without leaving [0, 255] or the L-inf bound. Everything is an integer, so delta is in S exactly (no rounding), and
no pixel is ever clipped (clipping would leave a class-correlated residual outside S that the authorized network
learns). Optionally, T(x) pulls pixels within `pull` levels of 0 or 255 inward to `pull` / 255 - `pull` (a function
of x alone), which lets every group carry at least min(pull, bound - pull) levels; with the default pull = 0, T is
the identity and K(x_u) = K(x) exactly: a group holding a saturated pixel then carries less (or nothing) in the
direction it cannot move.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .errors import UgeError
from .keyfile import KEY_BYTES, KEY_FILE, KEY_FORMAT, key_file_bytes, new_secret, read_key_file  # noqa: F401 (re-exported)

SIGN_MODES = ("random", "image", "fixed")  # a sign per image and region / per image / none


def _rng(secret: bytes, *words: int) -> np.random.Generator:
    """A numpy generator seeded by the whole key (256 bits, not a 32-bit seed) and `words`."""
    return np.random.default_rng([*np.frombuffer(secret, dtype=np.uint32).tolist(), *words])


def separated_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """(n, bits) int codes in {-1, +1}, one per class, far apart and distinct up to sign.

    A code and its negation make the same texture once a random sign multiplies it, so codes are drawn with the
    last bit's sign fixed at +1: distinct up to sign for every class while n <= 2 ** (bits - 1) (drawn without
    replacement; of 16 draws, the one whose closest two classes differ in the most bits); beyond that, classes
    share codes (callers warn).
    """
    best, best_distance = None, -1
    for _ in range(16 if n <= 1024 else 1):  # the pairwise search is O(n^2): one draw for very many classes
        if n <= 2 ** (bits - 1) and bits <= 62:
            values = rng.choice(2 ** (bits - 1), size=n, replace=False)  # bit bits-1 stays 0: sign +1
            codes = 1 - 2 * ((values[:, None] >> np.arange(bits)[None]) & 1)
        else:
            codes = rng.choice([-1, 1], size=(n, bits))
        if n > 1024:
            return codes
        distance = (codes[:, None] != codes[None]).sum(-1) + np.eye(n, dtype=int) * 10**6
        if distance.min() > best_distance:
            best, best_distance = codes, distance.min()
    return best


@dataclass(frozen=True)
class KeyGeometry:
    """What S is made of; derived from the key alone (so an authorized party can rebuild it)."""

    channels: int
    tile: int
    groups: int
    grain: int = 1  # positions are grouped in grain x grain cells that share group and sign (coarser textures)

    @property
    def cells(self) -> int:
        """Cells of one region (grain x grain pixels of one channel each); S spans all of them when groups == cells."""
        return self.channels * (self.tile // self.grain) ** 2

    @property
    def stage_is_public(self) -> bool:
        """Whether S is the span of every cell, so that K (subtract each cell's mean) does not depend on the key."""
        return self.groups >= self.cells

    @property
    def region_size(self) -> int:
        return self.channels * self.tile * self.tile


class KeyStage(nn.Module):
    """K(x) = x - U U^T x for [0, 1] (or any float) images (N, C, H, W) -> the same shape and dtype.

    Fixed and non-trainable (its tensors are buffers). Apply it to the whole image **before** any augmentation,
    in training and at test time: a crop or flip moves the tiles off the grid S is defined on, so K would no
    longer remove the perturbation and the network would learn the shortcut like any other.
    """

    def __init__(self, group_of: Tensor, sign: Tensor, tile: int, groups: int):
        super().__init__()
        if group_of.shape != sign.shape or group_of.dim() != 1 or group_of.numel() % (tile * tile):
            raise UgeError("a key stage needs one group index and one sign per position of a C x tile x tile region")
        counts = torch.bincount(group_of, minlength=groups)
        if (counts == 0).any():
            raise UgeError(f"every one of the {groups} groups of a key needs at least one position")
        self.tile, self.groups = tile, groups
        self.register_buffer("group_of", group_of.long())
        self.register_buffer("sign", sign.float())
        self.register_buffer("geometry", torch.tensor([tile, groups]))  # so a saved stage rebuilds itself
        # U^T as a (groups, C*tile*tile) matrix: row j is b_j / sqrt(|group j|).
        basis = torch.zeros(groups, group_of.numel(), dtype=torch.float64)  # float64: exact to ~1e-16, cast per input
        basis[group_of, torch.arange(group_of.numel())] = sign.double() / counts[group_of].double().sqrt()
        self.register_buffer("basis", basis, persistent=False)

    @property
    def channels(self) -> int:
        return self.group_of.numel() // (self.tile * self.tile)

    def regions(self, images: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, H // tile, W // tile, C * tile * tile): the tiled part of each image, by region."""
        n, c, h, w = images.shape
        p = self.tile
        if c != self.channels:
            raise UgeError(f"the key stage was made for {self.channels}-channel images, got {c} channels")
        if h < p or w < p:
            raise UgeError(f"images of {h}x{w} pixels are smaller than the key's {p}x{p} tile")
        rows, cols = h // p, w // p
        tiled = images[:, :, : rows * p, : cols * p].reshape(n, c, rows, p, cols, p)
        return tiled.permute(0, 2, 4, 1, 3, 5).reshape(n, rows, cols, c * p * p)

    def from_regions(self, regions: Tensor, like: Tensor) -> Tensor:
        """Inverse of `regions`: write (N, rows, cols, C*tile*tile) back into a copy of `like` (N, C, H, W)."""
        n, rows, cols, _ = regions.shape
        c, p = self.channels, self.tile
        out = like.clone()
        out[:, :, : rows * p, : cols * p] = (
            regions.reshape(n, rows, cols, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(n, c, rows * p, cols * p)
        )
        return out

    def forward(self, images: Tensor) -> Tensor:
        v = self.regions(images).double()  # float64 inside: the projection adds no float32 rounding of its own
        kept = v - (v @ self.basis.T) @ self.basis
        return self.from_regions(kept.to(images.dtype), images)

    def from_levels(self, images: Tensor) -> Tensor:
        """K of uint8 images (N, C, H, W) -> float32 [0, 1]-scaled keyed images: K(levels) / 255.

        The same as `forward(images / 255)` but exact for 8-bit data: K acts on the integer levels in float64, so
        K(x_u) and K(T(x)) give bit-identical float32 inputs (on float32 x / 255 they differ by float rounding,
        ~6e-8, which training, being chaotic, amplifies). The training loop uses it for uint8 images.
        """
        return (self(images.double()) / 255).float()


@dataclass(frozen=True)
class SecretKey:
    """A 256-bit secret and the signal family it parameterises; everything else is derived from it."""

    secret: bytes
    geometry: KeyGeometry
    num_classes: int

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise UgeError(f"a key is {KEY_BYTES} bytes, got {len(self.secret)}")
        g = self.geometry
        if g.grain < 1 or g.tile % g.grain:
            raise UgeError(f"the grain ({g.grain}) must divide the tile ({g.tile})")
        if not 1 <= g.groups <= g.cells:
            raise UgeError(f"groups must be in 1..{g.cells} for a {g.tile}-pixel tile of {g.grain}-pixel grain")
        if self.num_classes < 2:
            raise UgeError("a key needs at least 2 classes")

    @property
    def fingerprint(self) -> str:
        """sha256 of the secret: names a key without revealing it."""
        return hashlib.sha256(self.secret).hexdigest()

    def stage(self) -> KeyStage:
        """The key stage K: which group and sign each position of a region has (a random balanced partition)."""
        g = self.geometry
        rng = _rng(self.secret, 0)
        side = g.tile // g.grain
        cell_group = rng.permutation(np.arange(g.cells) % g.groups)
        cell_sign = rng.choice([-1.0, 1.0], size=g.cells).astype(np.float32)
        # position (c, i, j) of a region belongs to cell (c, i // grain, j // grain)
        c, i, j = np.meshgrid(np.arange(g.channels), np.arange(g.tile), np.arange(g.tile), indexing="ij")
        cell = ((c * side + i // g.grain) * side + j // g.grain).reshape(-1)
        return KeyStage(torch.from_numpy(cell_group[cell]), torch.from_numpy(cell_sign[cell]), g.tile, g.groups)

    def class_codes(self) -> Tensor:
        """(num_classes, groups) codes in {-1, +1}: the sign of each group in each class's texture (`separated_codes`)."""
        return torch.from_numpy(separated_codes(_rng(self.secret, 1), self.num_classes, self.geometry.groups)).to(torch.int32)

    def region_signs(self, first_row: int, count: int, rows: int, cols: int) -> Tensor:
        """eta of dataset rows first_row .. first_row + count - 1: (count, rows, cols) int32 in {-1, +1}.

        Each row's signs are SHAKE-256(secret, row index) bits: a function of the key and the row alone (so any
        sharding or batching gives the same release), and fast enough for millions of rows.
        """
        size = rows * cols
        digests = b"".join(
            hashlib.shake_256(self.secret + b"region-signs" + row.to_bytes(8, "little")).digest((size + 7) // 8)
            for row in range(first_row, first_row + count)
        )
        bits = np.unpackbits(np.frombuffer(digests, dtype=np.uint8).reshape(count, -1), axis=1)[:, :size]
        return torch.from_numpy(1 - 2 * bits.astype(np.int32)).reshape(count, rows, cols)


@dataclass
class KeyedOutput:
    """Protected uint8 images and the per-image invariance residual max |K(x_u) - K(T(x))| in 8-bit levels."""

    images: Tensor  # uint8 (N, C, H, W)
    invariance_levels: Tensor  # float64 (N,)
    mean_amplitude: float  # mean |delta| over the tiled pixels, in levels


def protect_keyed(
    images: Tensor,
    labels: Tensor,
    key: SecretKey,
    pixel_bound: int,
    first_row: int = 0,
    signs: str = "random",
    amplitude: int | None = None,
    pull: int = 0,
    stage: KeyStage | None = None,
) -> KeyedOutput:
    """x_u = T(x) + delta with delta in S exactly and |x_u - x| <= pixel_bound on every pixel (module docstring).

    Args:
        images: uint8 (N, C, H, W), the source pixels.
        labels: int64 (N,), class indices in [0, key.num_classes).
        key: the secret key.
        pixel_bound: the L-inf bound in 8-bit levels (floor(rho * 255)).
        first_row: index of images[0] in its split (the per-row signs depend on it, not on the batching).
        signs: "random" (a sign per image and region), "image" (one sign per image) or "fixed" (+1 everywhere).
        amplitude: largest |delta| in levels; None: pixel_bound.
        pull: levels T moves pixels near 0 / 255 inward (0: T is the identity and K(x_u) = K(x) exactly; with
            pull > 0 a saturated pixel can carry +-min(pull, pixel_bound - pull) levels).
        stage: key.stage(), when the caller already built it.

    Returns: a KeyedOutput; its images are a pure function of (images, labels, key, arguments, first_row).
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise UgeError(f"expected uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
    if signs not in SIGN_MODES:
        raise UgeError(f"signs must be one of {', '.join(SIGN_MODES)}, got {signs!r}")
    stage = stage or key.stage()
    amplitude = pixel_bound if amplitude is None else min(amplitude, pixel_bound)
    if not 0 <= pull <= pixel_bound:
        raise UgeError(f"pull must be in 0..{pixel_bound} levels (T may not move a pixel past the bound), got {pull}")
    source = images.to(torch.int32)
    adjusted = source.clamp(pull, 255 - pull)  # T(x): depends on x alone, never on the class
    low = (source - pixel_bound).clamp(min=0)
    high = (source + pixel_bound).clamp(max=255)

    t = stage.regions(adjusted)  # (N, rows, cols, D) int32
    n, rows, cols, _ = t.shape
    codes = key.class_codes()[labels]  # (N, groups)
    if signs == "fixed":
        eta = torch.ones(n, rows, cols, dtype=torch.int32)
    elif signs == "image":  # one sign for the whole image: the texture stays periodic
        eta = key.region_signs(first_row, n, 1, 1).expand(n, rows, cols)
    else:
        eta = key.region_signs(first_row, n, rows, cols)
    # Direction of every pixel: eta_r * eps_{y, g(i)} * b_i, all +-1.
    direction = eta[..., None] * codes[:, None, None, stage.group_of] * stage.sign.to(torch.int32)
    room = torch.where(direction > 0, stage.regions(high) - t, t - stage.regions(low))  # levels it can move
    scale = torch.full((n, rows, cols, key.geometry.groups), amplitude, dtype=torch.int32)
    index = stage.group_of.expand(n, rows, cols, -1)
    scale = scale.scatter_reduce(-1, index, room.clamp(min=0), reduce="amin", include_self=True)
    delta = direction * scale.gather(-1, index)
    protected = stage.from_regions(t + delta, adjusted).to(torch.uint8)

    return KeyedOutput(
        images=protected,
        invariance_levels=invariance_residual(stage, protected, adjusted),
        mean_amplitude=delta.abs().float().mean().item(),
    )


def invariance_residual(stage: KeyStage, protected: Tensor, adjusted: Tensor) -> Tensor:
    """max |K(x_u) - K(T(x))| per image, in 8-bit levels (float64, (N,)), from the released uint8 pixels `protected`
    and the int `adjusted` = T(x), both (N, C, H, W).

    K is linear, so this is the residual of x_u - T(x) after removing S inside the tiled part, plus whatever changed
    outside it (K leaves that alone). Exactly 0 when the perturbation lies in S.
    """
    change = protected.to(torch.int32) - adjusted.to(torch.int32)
    v = stage.regions(change).double()
    inside = (v - (v @ stage.basis.T) @ stage.basis).abs().flatten(1).amax(1)
    rows, cols = v.shape[1], v.shape[2]
    change[:, :, : rows * stage.tile, : cols * stage.tile] = 0
    return torch.maximum(inside, change.abs().flatten(1).amax(1).double())


def key_json(key: SecretKey) -> bytes:
    """The key file: the secret (hex) and what S is made of. Whoever holds it is authorized."""
    g = key.geometry
    return key_file_bytes("keyed", key.secret, channels=g.channels, tile=g.tile, groups=g.groups, grain=g.grain,
                          num_classes=key.num_classes)


def load_secret_key(path: str | Path, num_classes: int | None = None) -> SecretKey:
    """A `SecretKey` from a key file (`key.json`) or a private folder holding one; UgeError if it is not one."""
    secret, data = read_key_file(path, "keyed")
    try:
        key = SecretKey(secret, KeyGeometry(data["channels"], data["tile"], data["groups"], data.get("grain", 1)), data["num_classes"])
    except (KeyError, TypeError) as e:
        raise UgeError(f"{path} is not a keyed key file (missing or bad field {e})") from None
    if num_classes is not None and key.num_classes != num_classes:
        raise UgeError(f"the key {path} was made for {key.num_classes} classes; this dataset has {num_classes}")
    return key
