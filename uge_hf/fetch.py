"""One resolver for "a Hub id or a local folder": fetch a release (or dataset snapshot) to a folder on disk.

Used by verify, authorized, evaluate and the demo; `hub.py` (push) builds on it, never the other way round.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import constants

from .errors import UgeError
from .progress import library_bars

# A Hub id to read from may also be a bare name (e.g. a canonical dataset); anything else must be a local path.
HUB_ID = re.compile(r"^(?:[\w.-]+/)?[\w.-]+$", flags=re.ASCII)


def offline() -> bool:
    """Whether huggingface_hub is in offline mode (read now, so a patched constant counts)."""
    is_offline = getattr(constants, "is_offline_mode", None)
    return bool(is_offline() if is_offline is not None else constants.HF_HUB_OFFLINE)


@library_bars()
def fetch_release(
    repo_or_dir: str | os.PathLike, revision: str | None = None, allow_patterns: list[str] | None = None
) -> Path:
    """A release folder on disk: `repo_or_dir` itself if it is a local folder, else a Hub download of it.

    A Hub id is fetched with `snapshot_download(repo_type="dataset")` into the usual HF cache (offline, an
    earlier download is used); `allow_patterns` limits what is downloaded.
    """
    path = Path(os.path.expanduser(os.fspath(repo_or_dir)))
    if path.exists():
        if not path.is_dir():
            raise UgeError(f"{path} is a file: pass the release folder (the one with README.md)")
        if revision is not None:
            raise UgeError(f"a revision ({revision}) applies to a Hub repo, not to the local folder {path}")
        return path
    text = os.fspath(repo_or_dir)
    if isinstance(repo_or_dir, os.PathLike) or not HUB_ID.fullmatch(text) or text.startswith("."):
        raise UgeError(f"no such release folder: {path}")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(text, repo_type="dataset", revision=revision, allow_patterns=allow_patterns))
    except RevisionNotFoundError:
        raise UgeError(f"the Hub dataset {text} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise UgeError(
            f"'{text}' is neither a local folder nor a dataset repo on the Hub (or it is private and your token"
            " cannot read it)"
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        why = "offline mode is on (HF_HUB_OFFLINE is set)" if offline() else "the Hub could not be reached"
        raise UgeError(
            f"'{text}' is not a local folder, {why}, and it is not in the local HF cache: download it where there"
            " is a network, or pass a local release folder"
        ) from None
    except HfHubHTTPError as e:
        raise UgeError(f"could not download {text} from the Hub: {first_line(e)}") from None
    except (ConnectionError, OSError) as e:
        raise UgeError(f"could not download {text} from the Hub ({first_line(e)}): check the network") from None


def first_line(error: Exception) -> str:
    """An exception's message, first line only (a Hub error can run to a page)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
