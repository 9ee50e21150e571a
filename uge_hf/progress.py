"""Progress: uge-hf's own bars (rich), shown by the main process only, and one switch for every bar.

The switch: `UGE_HF_NO_PROGRESS=1` (read at each call) or `uge-hf --no-progress COMMAND`. Off, nothing draws a bar:
not uge-hf's rich bars, and not the tqdm bars of `datasets` (map, parquet writing, split generation) or of
`huggingface_hub` (downloads, uploads), which uge-hf's entry points (`protect`, `push_release`, `verify_release`,
`unlock`, `evaluate`, `train_authorized`, `fetch_release`) silence for their duration (`library_bars`) and give
back as they found them. On, every bar shows, on the main process only.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

NO_PROGRESS_ENV = "UGE_HF_NO_PROGRESS"


def is_main_process() -> bool:
    # The launchers (torchrun, accelerate launch) export RANK; reading it avoids building Accelerate state here.
    return int(os.environ.get("RANK", "0")) == 0


def progress_enabled() -> bool:
    """Whether bars are drawn: on the main process, unless UGE_HF_NO_PROGRESS is set (to anything but 0/false/no)."""
    switch = os.environ.get(NO_PROGRESS_ENV, "").strip().lower()
    return is_main_process() and switch in ("", "0", "false", "no")


@contextmanager
def library_bars() -> Iterator[None]:
    """For the duration: `datasets`' and `huggingface_hub`'s progress bars off when uge-hf's are off (the switch,
    or another rank than the main one), then restored as they were. Also a decorator. On: left as they are."""
    if progress_enabled():
        yield
        return
    with quiet_libraries():
        yield


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """For the duration: `datasets`' and `huggingface_hub`'s progress bars off, then restored as they were; for
    steps that one of uge-hf's own bars already shows (a shard's map and parquet writing)."""
    import datasets.utils
    import huggingface_hub.utils

    with warnings.catch_warnings():  # HF_DATASETS_DISABLE_PROGRESS_BARS=0 has priority: then theirs stay on
        warnings.simplefilter("ignore")
        restore = not datasets.utils.are_progress_bars_disabled()
        if restore:
            datasets.utils.disable_progress_bars()
        try:
            with huggingface_hub.utils.disable_progress_bars():  # re-enables on exit only what it disabled
                yield
        finally:
            if restore:
                datasets.utils.enable_progress_bars()


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yield `advance(**metrics)`: one step forward, with the latest metrics shown beside the bar (`total` None: steps
    counted, no end known)."""
    if not progress_enabled():
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
