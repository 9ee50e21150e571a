"""A release on the Hugging Face Hub: fetch one (for authorized users, verify) and publish one (one commit).

What is pushed is the local release folder byte for byte, through `HfApi.create_commit`: not `datasets`'
`push_to_hub`, which re-encodes the shards and rewrites the card's YAML. The whole release is ONE commit, so a
push that fails (offline, refused, connection cut) publishes nothing, and running it again completes it.

A release of more than `MAX_FILES_PER_COMMIT` files (many shards) is more than the Hub advises for one commit. Pushed
to `main`, it goes through a pull request: `create_pull_request`, then commits of at most that many files to its
`refs/pr/N`, then `merge_pull_request`, so `main` moves from the old release to the new one in one step and a push
cut off midway leaves `main` as it was (the open pull request holds the part that was uploaded). The Hub's pull
requests target `main` only: pushed to another branch (`--revision`), such a release arrives in several commits on
that branch, in order (deletions first), and the branch is whole only after the last.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import constants

from .version import __version__
from .errors import UgeError
from .fetch import first_line as _first_line, offline
from .progress import library_bars

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

# owner/name as the Hub spells it (its own validator also bans "--" and ".." and a leading/trailing "-" or ".").
_REPO_ID = re.compile(r"^[\w.-]{1,96}/[\w.-]{1,96}$", flags=re.ASCII)
# Files of the Hub's own making that a release push neither uploads nor deletes.
_HUB_FILES = {".gitattributes"}
# The Hub's advice: at most about 100 files per commit (https://huggingface.co/docs/hub/storage-limits).
MAX_FILES_PER_COMMIT = 100


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid `OWNER/NAME` dataset repo id, else a UgeError saying why."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id):
        raise UgeError(f"invalid Hub repo id {repo_id!r}: expected OWNER/NAME, e.g. me/cifar10-uge")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise UgeError(f"invalid Hub repo id {repo_id!r}: {str(e).splitlines()[0]}") from None
    return repo_id


def check_push_ready(repo_id: str, token: str | None = None) -> str:
    """The checks a push can make without the network: repo id, offline mode, a token. Returns the token.

    `uge-hf protect --push` runs them before any training, so a doomed push does not wait hours to fail.
    """
    from huggingface_hub import get_token

    check_repo_id(repo_id)
    if offline():
        raise UgeError(
            f"cannot push to {repo_id}: offline mode is on (HF_HUB_OFFLINE is set); unset it, or write the release"
            " now and publish it later with `uge-hf push FOLDER REPO_ID`"
        )
    token = token or get_token()
    if not token:
        raise UgeError(
            f"cannot push to {repo_id}: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN"
            " to a token with write access"
        )
    return token


def release_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Repo path -> local file of everything a push uploads: every file of the folder, hidden ones excepted."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            files[relative.as_posix()] = path
    return files


@library_bars()
def push_release(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    force: bool = False,
    endpoint: str | None = None,
) -> "CommitInfo":
    """Publish the release `folder` to the dataset repo `repo_id` as one commit (more than `MAX_FILES_PER_COMMIT`
    files: a pull request of several commits, merged onto main in one step; see the module); return the (last)
    commit's info, which names the pull request when there was one.

    Args:
        folder: a release folder written by `protect` (it must pass `verify_release`, or nothing is pushed).
        repo_id: `OWNER/NAME`; the dataset repo is created if missing (`private` applies only then).
        revision: the branch to commit to (created from `main` if missing); None: `main`.
        commit_message: the commit's summary (default: the uge-hf version and the authorized specs).
        token: a token with write access (default: `HF_TOKEN` or the saved `hf auth login`).
        force: replace a repo that holds files that are not a uge-hf release. Without it such a repo is refused.
        endpoint: the Hub's URL (default: `HF_ENDPOINT`, else huggingface.co).

    After the commit, the revision holds exactly the folder's files (plus the Hub's `.gitattributes`): the files
    of an earlier release that this one lacks (e.g. old shards) are deleted in the same commit.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    from .card import read_card
    from .verify import key_material, verify_release

    folder = Path(folder)
    if not folder.is_dir():
        raise UgeError(f"no release folder at {folder}")
    secret = key_material(folder)  # before anything touches the network
    if secret:
        raise UgeError(f"refusing to publish {folder}: it holds key material ({', '.join(secret[:3])}); whoever has it"
                       " is authorized. Publish the release folder, keep OUTPUT.private/ to yourself")
    token = check_push_ready(repo_id, token)
    failed = [check for check in verify_release(folder) if not check.ok]
    if failed:
        raise UgeError(
            f"refusing to publish {folder}: it fails verification ({'; '.join(map(str, failed))}); "
            f"run `uge-hf verify {folder}` for every check"
        )
    uge = read_card(folder)
    local = release_files(folder)

    api = HfApi(endpoint=endpoint, token=token)
    branch = revision if revision not in (None, constants.DEFAULT_REVISION) else None
    stage = "creating the dataset repo"
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True, token=token)
        stage = "listing the repo's files"
        try:
            remote = set(api.list_repo_files(repo_id, repo_type="dataset", revision=branch, token=token))
            branch_exists = True
        except RevisionNotFoundError:  # the branch will start from main: main's files are what it holds
            remote = set(api.list_repo_files(repo_id, repo_type="dataset", token=token))
            branch_exists = False
        theirs = sorted(remote - _HUB_FILES)
        is_release = "README.md" in remote and "uge_config.json" in remote
        if theirs and not is_release and not force:
            shown = ", ".join(theirs[:5]) + (", ..." if len(theirs) > 5 else "")
            raise UgeError(
                f"the dataset repo {repo_id} already holds files that are not a uge-hf release ({shown}):"
                " choose another repo, or pass --force to replace them"
            )
        operations = [CommitOperationDelete(path_in_repo=path) for path in theirs if path not in local]
        operations += [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(file)) for path, file in local.items()]
        if branch is not None and not branch_exists:
            stage = f"creating the branch {branch}"
            api.create_branch(repo_id, branch=branch, repo_type="dataset", exist_ok=True, token=token)
        stage = "uploading the commit"
        specs = ", ".join(net.spec for net in uge.authorized)
        message = commit_message or f"uge-hf {__version__} release (authorized: {specs})"
        description = f"Pushed with `uge-hf push`. rho {uge.rho}, pixel bound {uge.pixel_bound}/255."
        if len(operations) <= MAX_FILES_PER_COMMIT:
            return api.create_commit(repo_id, operations, commit_message=message, commit_description=description,
                                     repo_type="dataset", revision=branch, token=token)
        chunks = [operations[i:i + MAX_FILES_PER_COMMIT] for i in range(0, len(operations), MAX_FILES_PER_COMMIT)]
        if branch is not None:  # no pull request can target it: the commits land on the branch one by one
            for number, chunk in enumerate(chunks, 1):
                stage = f"uploading commit {number} of {len(chunks)} to the branch {branch}"
                info = api.create_commit(repo_id, chunk, commit_message=f"{message} ({number}/{len(chunks)})",
                                         commit_description=description, repo_type="dataset", revision=branch,
                                         token=token)
            return info
        stage = "opening the pull request that carries the release to main"
        pr = api.create_pull_request(repo_id, title=message, repo_type="dataset", token=token,
                                     description=f"{description} {len(operations)} files in {len(chunks)} commits,"
                                                 " merged onto main in one step.")
        for number, chunk in enumerate(chunks, 1):
            stage = f"uploading commit {number} of {len(chunks)} to pull request #{pr.num}"
            info = api.create_commit(repo_id, chunk, commit_message=f"{message} ({number}/{len(chunks)})",
                                     commit_description=description, repo_type="dataset", revision=pr.git_reference,
                                     token=token)
        stage = f"merging pull request #{pr.num} onto main"
        api.merge_pull_request(repo_id, pr.num, repo_type="dataset", token=token)
        return dataclasses.replace(info, pr_url=pr.url)  # the last commit of the merged pull request, which it names
    except UgeError:
        raise
    except Exception as e:  # every Hub or network failure becomes one line; the commit is all or nothing
        raise _push_error(e, repo_id, stage, api.endpoint) from None


def _push_error(error: Exception, repo_id: str, stage: str, endpoint: str) -> Exception:
    """One clear line for a failed push, or the error itself if it is a bug rather than the Hub or the network."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    rerun = "nothing was published (a release is one commit): run the same command again"
    if "pull request #" in stage:  # the release reaches main only at the merge
        number = stage.split("#")[1].split()[0]
        rerun = (f"main is unchanged (the release reaches it only when pull request #{number} is merged): close that"
                 " pull request and run the same command again")
    elif "to the branch" in stage:
        rerun = "the branch holds part of the release: run the same command again to complete it"
    if isinstance(error, OfflineModeIsEnabled):
        return UgeError(f"cannot push to {repo_id}: offline mode is on (HF_HUB_OFFLINE is set); {rerun} without it")
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        if status == 401:
            return UgeError(
                f"the Hub refused the token while {stage} for {repo_id} (401): log in again with `hf auth login`"
                " or set HF_TOKEN to a valid token"
            )
        if status == 403:
            return UgeError(
                f"no write permission on {repo_id} (403 while {stage}): use a token with write access to that"
                " namespace, or push to a repo of your own"
            )
        if isinstance(error, RepositoryNotFoundError):
            return UgeError(f"the dataset repo {repo_id} was not found while {stage} (404): check the name and the token")
        return UgeError(f"the Hub answered {status} while {stage} for {repo_id} ({_first_line(error)}); {rerun}")
    if isinstance(error, _transport_errors()):
        if stage == "uploading the commit":
            return UgeError(
                f"the connection to {endpoint} was lost while uploading the commit to {repo_id} ({_first_line(error)});"
                " the commit is all or nothing, so either nothing was published or all of it was: run the same"
                " command again to complete it"
            )
        return UgeError(f"could not reach the Hub at {endpoint} while {stage} ({_first_line(error)}); {rerun}")
    return error


def _transport_errors() -> tuple[type[Exception], ...]:
    """Network failures of whichever HTTP client this huggingface_hub uses (httpx2, httpx or requests)."""
    errors: list[type[Exception]] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)
