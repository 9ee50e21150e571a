"""One table of every measured CPU-protocol variant (methods, solvers, ablations), laid out like the paper's Table 1.

    python benchmarks/summary.py [--prefix cifar10_cpu]

Reads `benchmarks/results/{prefix}*.json` (written by cifar10_cpu.py) and writes `{prefix}_summary.md`: a row
per variant, a column per network and scheme, each cell the clean-test accuracy (%) of that network trained on
the variant's release (Normal training unless the column names the scheme); the "Original" row is the same network
trained on the clean rows. A cell is empty when the variant did not train that network (ablations train fewer).
The keyed method's authorized network (its backbone behind the key stage) has a column of its own; the lock method's
(trained on the unlocked images) too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from protocol import ABLATIONS, variant_name
from uge_hf.config import SOLVERS, ProtectConfig

HERE = Path(__file__).resolve().parent
PAPER_NAMES = {None: "UGE", "unlearn": "Unlearn", "undistill": "UnDistill", "without-ud": "UGE w/o UD"}


def loss_terms(protect: dict) -> str:
    """The loss terms a variant optimised, each with its weight unless it is 1: `10 gm + fd + 0.5 ud`."""
    config = ProtectConfig(**protect)
    weights = {"gm": config.lambda_gm, "fd": config.lambda_fd, "ud": config.lambda_ud}
    return " + ".join(name if weight == 1 else f"{weight:g} {name}" for name, weight in weights.items() if weight > 0)


def ablation_of(name: str, solver: str, prefix: str) -> str | None:
    return next((a for a in ABLATIONS if variant_name(prefix, solver, a) == name), None)


def method_of(payload: dict) -> str:
    return payload["protocol"]["protect"].get("method", "gradient-matching")


def column_of(row: dict, method: str) -> tuple[str, str]:
    """A row's column: (network, scheme); the keyed authorized network (behind its key) is not the plain one."""
    authorized = row["role"] == "authorized"
    suffix = {"keyed": " behind its key", "lock": " unlocked"}.get(method, "") if authorized else ""
    return (row["network"] + suffix, row["scheme"])


def summary(payloads: dict[str, dict], prefix: str = "cifar10_cpu") -> str:
    """Rows in the paper's order: every solver with all three losses, then each ablation; then the keyed and lock methods."""
    def order(item):
        name, solver, method = item
        if method in ("keyed", "lock"):
            return (len(PAPER_NAMES), method)
        return (list(PAPER_NAMES).index(ablation_of(name, solver, prefix)), SOLVERS.index(solver))

    variants = sorted(((name, payload["protocol"]["protect"].get("solver", "generator"), method_of(payload))
                       for name, payload in payloads.items()), key=order)
    columns: dict[tuple[str, str], str] = {}  # (network, scheme) -> header, in first-seen order
    original: dict[tuple[str, str], float] = {}
    for payload in payloads.values():
        for row in payload["rows"]:
            key = column_of(row, method_of(payload))
            columns.setdefault(key, key[0] + ("" if row["scheme"] == "Normal" else f" {row['scheme']}")
                              + (" (authorized)" if row["role"] == "authorized" else ""))
            original.setdefault(key, row["clean"])
    header = ["variant", "method", "solver / key", "losses", *columns.values(), "protect (min)", "results file"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.append("| Original | - | - | - | " + " | ".join(f"{100 * original[k]:.1f}" for k in columns) + " | - | |")
    noise_rows = next((p["noise_baseline_rows"] for p in payloads.values() if p["noise_baseline_rows"]), [])
    noise = {(r["network"], r["scheme"]): r["protected"] for r in noise_rows}
    lines.append("| uniform noise, same rho | - | - | - | "
                 + " | ".join(f"{100 * noise[k]:.1f}" if k in noise else "" for k in columns) + " | - | |")
    for name, solver, method in variants:
        payload = payloads[name]
        measured = {column_of(r, method): r["protected"] for r in payload["rows"]}
        cells = [f"{100 * measured[k]:.1f}" if k in measured else "" for k in columns]
        minutes = payload["timings_s"]["protect"] / 60
        if method == "keyed":
            key = payload.get("release_key") or vars(ProtectConfig(**payload["protocol"]["protect"]).keyed)
            pull = key.get("pull_levels", key.get("pull"))
            label, how, losses = "Keyed", f"tile {key['tile']}, grain {key['grain']}, {key['groups']} groups, signs {key['signs']}, pull {pull}", "-"
        elif method == "lock":
            lock = payload.get("release_lock") or vars(ProtectConfig(**payload["protocol"]["protect"]).lock)
            label, how, losses = "Lock", f"poison {lock['poison']}", "-"
        else:
            label, how, losses = PAPER_NAMES[ablation_of(name, solver, prefix)], solver, loss_terms(payload["protocol"]["protect"])
        lines.append(f"| {label} | {method} | {how} | {losses} | " + " | ".join(cells) + f" | {minutes:.1f} | `{name}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default="cifar10_cpu")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    files = sorted(args.results_dir.glob(f"{args.prefix}*.json"))
    payloads = {p.stem: json.loads(p.read_text()) for p in files}
    table = summary(payloads, args.prefix)
    (args.results_dir / f"{args.prefix}_summary.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
