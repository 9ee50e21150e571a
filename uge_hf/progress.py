"""Rich progress bars, shown by the main process only (one bar per job, not one per GPU)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def is_main_process() -> bool:
    # The launchers (torchrun, accelerate launch) export RANK; reading it avoids building Accelerate state here.
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    """Yield `advance(**metrics)`: one step forward, with the latest metrics shown beside the bar."""
    if not is_main_process() or os.environ.get("UGE_HF_NO_PROGRESS"):
        yield lambda **metrics: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
    )
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total, metrics="")

        def advance(**metrics: float) -> None:
            shown = " ".join(f"{name} {value:.4f}" for name, value in metrics.items())
            progress.update(task, advance=1, metrics=shown)

        yield advance
