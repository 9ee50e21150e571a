"""The "Inspect a release" tab: a release folder or Hub dataset's card, preview, results and checks.

`inspect_handler` returns the values of the tab's outputs; a user mistake is a message, never a crash.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UgeError
from .common import warn

if TYPE_CHECKING:
    from ..card import UgeBlock

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # the demo asks for user/name (fetch.HUB_ID also takes a bare name)
RELEASE_FILES = ["README.md", "preview.png", "uge_config.json", "authorized/*"]  # what Inspect downloads



@dataclass
class Inspection:
    """What the Inspect tab shows about one release."""

    ref: str  # as given: a folder or a Hub id
    folder: Path  # the local folder (a partial snapshot for a Hub id)
    card: UgeBlock
    checks: list[tuple[str, bool, str]]  # card-based: (what, passed, detail)
    verify_ok: bool | None  # verify_release's verdict; None where it was not run
    verify: str  # markdown: verify_release's checks, or why it was not run

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks) and self.verify_ok is not False


def resolve_release(ref: Any) -> Path:
    """A local release folder, or a partial download (card, preview, weights) of a Hub dataset."""
    text = str(ref or "").strip()
    if not text:
        raise UgeError("no release given: type a local folder or a Hub dataset id (user/name)")
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UgeError(f"{text} is a file, not a release folder")
    if not HUB_ID.fullmatch(text):
        raise UgeError(f"no folder at {text}, and it is not a Hub dataset id (user/name)")
    from ..fetch import fetch_release

    return fetch_release(text, allow_patterns=RELEASE_FILES)


def card_checks(folder: Path, card: UgeBlock) -> list[tuple[str, bool, str]]:
    """Checks the card allows without the data: each public authorized file against the card's sha256 and the spec
    rebuilt here (`uge_hf.authorized.weight_problems`); private weights (keyed) are not in a release, and no key
    material may be."""
    from ..authorized import read_weights, weight_problems
    from ..verify import key_material

    checks = []
    for net in card.authorized:
        spec = net.spec
        if net.private:
            checks.append((f"{spec}: weights are private", True,
                           f"not in the release; the card's sha256 {net.init_sha256[:16]}... checks a copy"))
            continue
        try:
            problems = weight_problems(net, read_weights(folder, net))
        except Exception as error:
            checks.append((f"{spec}: weights file", False, str(error)))
            continue
        checks.append((f"{spec}: weights == card's init_sha256 == spec rebuilt here", not problems, "; ".join(problems) or "match"))
    if not checks:
        checks.append(("authorized networks listed in the card", False, "none"))
    found = key_material(folder)
    checks.append(("no key material in the release", not found, ", ".join(found) or "none found"))
    return checks


def run_verify(ref: str, folder: Path) -> tuple[bool | None, str]:
    """`uge_hf.verify.verify_release` (card, weights, shards, every image), as (passed, markdown).

    (None, a note) where this uge-hf has no `verify` module: the card-based checks are then all there is.
    """
    if importlib.util.find_spec("uge_hf.verify") is None:
        return None, "`uge_hf.verify` is not in this version of uge-hf: only the card-based checks above were run."
    from ..verify import verify_release  # optional module, written separately

    target = str(folder) if Path(ref).expanduser().is_dir() else ref  # a Hub id: verify downloads the shards too
    try:
        checks = list(verify_release(target))
    except UgeError as error:
        return False, f"**verify: FAILED** - {error}"
    ok = bool(checks) and all(check.ok for check in checks)
    lines = [f"- {'PASS' if check.ok else 'FAIL'} - {check.name}: {check.detail}" for check in checks]
    head = f"**verify: {'passed' if ok else 'FAILED'}** ({sum(c.ok for c in checks)} of {len(checks)} checks)"
    return ok, "\n".join([head, "", *lines])


def inspect_release(ref: Any, verify: bool = True) -> Inspection:
    """Read a release's card and run the checks; `verify=False` skips verify_release (which reads every shard)."""
    from ..card import read_card

    folder = resolve_release(ref)
    card = read_card(folder)
    verify_ok, verify_md = run_verify(str(ref).strip(), folder) if verify else (None, "*verify_release not run.*")
    return Inspection(str(ref).strip(), folder, card, card_checks(folder, card), verify_ok, verify_md)


def summary_markdown(inspection: Inspection) -> str:
    card = inspection.card
    fields = card.method_fields  # the method's own settings: the keyed method's key, the paper's encoder
    nets = [f"- `{n.spec}`: {n.arch}, width {n.width}, seed {n.seed}, "
            f"{n.num_classes} classes; init sha256 `{n.init_sha256}`" for n in card.authorized]
    encoder = fields.get("encoder") or {}
    size = list(card.image_size)
    keyed, lock = card.method == "keyed", card.method == "lock"
    described = {
        "keyed": " (the authorized network's secret key stage removes the perturbation; the key is **not** public: "
                 "authorized weights come from the publisher, the card holds their sha256)",
        "lock": " (the key holder unlocks the exact source images; the key is **not** public: it comes from the "
                "publisher, the card holds its sha256; the `unlock` column is random bytes without it)",
    }
    lines = [
        f"### {inspection.ref}",
        f"- **method**: {card.method}"
        + described.get(card.method, " (the paper's UGE; the authorized initial weights are public, in the release)"),
        f"- **rho**: {card.rho} (every pixel within {card.pixel_bound} levels of its source)",
        (f"- **key**: {fields.get('key')}" if keyed else
         f"- **poison**: {fields['lock'].get('poison')}; unlock data {card.results.method_results.get('unlock', {}).get('bytes_per_row')}"
         " bytes per row" if lock else
         f"- **encoder**: {encoder.get('name')}" + (f" @ {encoder['revision']}" if encoder.get("revision") else "")),
        f"- **protected splits**: {', '.join(card.protected_splits)}; image size {size}; "
        f"{card.num_classes} classes; seed {card.seed}; uge-hf {card.uge_hf_version}",
        f"- **generator released**: {fields.get('generator_released')}"
        + (" (anyone can make (x, x_u) pairs with it and learn to undo the protection)" if fields.get("generator_released") else ""),
        "",
        ("**Authorized networks** (private: key stage + backbone, from the publisher)" if keyed else
         "**The network the measurements used** (public init; the key holder may train any network)" if lock else
         "**Authorized networks** (train from `authorized/SPEC.safetensors` with the card's recipe)"),
        "",
        *nets,
    ]
    return "\n".join(lines)


def results_markdown(card: UgeBlock) -> str:
    """The card's `results` block flattened into a two-column table (keys joined by ' / ')."""
    if card.results is None:
        return "*The card has no results block.*"
    rows = ["**Measured** (the card's `uge.results`)", "", "| figure | value |", "|---|---|"]
    rows += [f"| {key} | {value} |" for key, value in _flatten(card.results.to_dict())]
    return "\n".join(rows)


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            out += _flatten(item, f"{prefix} / {key}" if prefix else str(key))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = []
        for i, item in enumerate(value):
            label = item.get("spec", item.get("name", str(i)))
            out += _flatten({k: v for k, v in item.items() if k not in ("spec", "name")}, f"{prefix} / {label}")
        return out
    return [(prefix, value)]


def checks_markdown(inspection: Inspection) -> str:
    head = "**Card checks: passed**" if all(ok for _, ok, _ in inspection.checks) else "**Card checks: FAILED**"
    rows = [f"- {'PASS' if ok else 'FAIL'} - {what} ({detail})" for what, ok, detail in inspection.checks]
    return "\n".join([head, "", *rows, "", inspection.verify])


InspectOutputs = tuple  # (summary markdown, preview path, results markdown, checks markdown, message)


def inspect_handler(ref: Any, verify: bool = True) -> InspectOutputs:
    """The "Inspect" button: the five outputs of the tab; an unknown release gives a message."""
    try:
        inspection = inspect_release(ref, verify=verify)
    except UgeError as error:
        warn(str(error))
        return "", None, "", "", f"Could not inspect: {error}"
    except Exception as error:
        warn(f"unexpected error: {error}")
        return "", None, "", "", f"Unexpected error ({type(error).__name__}): {error}"
    preview = inspection.folder / "preview.png"
    verdict = {True: "verify passed", False: "verify FAILED", None: "verify not run"}[inspection.verify_ok]
    cards = "card checks passed" if all(ok for _, ok, _ in inspection.checks) else "card checks FAILED"
    message = f"Release read: {cards}, {verdict}." + ("" if inspection.passed else " See the checks below.")
    return (
        summary_markdown(inspection), str(preview) if preview.is_file() else None, results_markdown(inspection.card),
        checks_markdown(inspection), message,
    )  # fmt: skip
