"""Publishing a release: push_release / `uge-hf push` / `protect --push` against a fake Hub on 127.0.0.1.

The fake Hub answers the few API calls huggingface_hub's `create_repo`, `list_repo_files`, `create_branch`,
`create_commit`, `create_pull_request` and `merge_pull_request` make (repo create, tree, branch, validate-yaml,
preupload, commit, discussions: open, details, merge) and records every commit it receives and every state `main`
goes through. A pull request is a branch `refs/pr/N` copied from main when opened; merging it makes main that
branch's files in one step (the real Hub makes a merge commit; conflicts are not modelled). Its preupload answers "regular" for every file, so the files travel base64-encoded inside the NDJSON
commit payload; the real Hub answers "lfs" for parquet / safetensors and huggingface_hub then uploads those
through LFS / Xet before the same commit call. That transfer path is not exercised here (it needs the Hub's
storage backends); what is tested is everything uge-hf decides: what goes into the one commit, where, and
what a failure tells the user.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml
from datasets import load_dataset
from huggingface_hub import constants
from typer.testing import CliRunner

import uge_hf
from uge_hf.card import read_card
from uge_hf.cli import app
from uge_hf.errors import UgeError
from uge_hf.hub import check_repo_id, release_files

from .conftest import make_image_dataset

WRITE, READ = "hf_write_token", "hf_read_token"
GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
runner = CliRunner()
TINY_FLAGS = [  # TINY_OPTIONS as `uge-hf protect` flags (one trajectory and one generator epoch)
    "--method", "gradient-matching", "--set", "publish_authorized=true", "--authorized", "resnet18-w4-seed0", "--encoder", "surrogate", "--trajectory-epochs", "1",
    "--generator-epochs", "1", "--batch-size", "8", "--set", "recipe.batch_size=8", "--set", "generator_channels=4",
    "--set", "generator_blocks=1", "--set", "surrogate_epochs=1", "--set", "undistill_hacker=lenet-w2-seed1",
]


class FakeHub:
    """Dataset repos in memory: {repo_id: {"private": bool, "branches": {name: {path: bytes}}}}."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.commits: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.cut_next_commit = False
        self.cut_commit_number: int | None = None  # cut the connection on this commit (1 = the first received)
        self.received = 0  # commit calls received, answered or not
        self.main_states: list[dict[str, bytes]] = []  # main's files after each change of main
        self.merged: list[int] = []  # pull requests merged, in order
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def add_repo(self, repo_id: str, files: dict[str, bytes], private: bool = False):
        self.repos[repo_id] = {"private": private, "branches": {"main": {".gitattributes": GITATTRIBUTES, **files}}}

    def set_branch(self, repo: dict, branch: str, files: dict[str, bytes]):
        repo["branches"][branch] = files
        if branch == "main":
            self.main_states.append(dict(files))

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id]["branches"][branch]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _reply(self, status: int, body, error_code: str | None = None):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if error_code:
                    self.send_header("X-Error-Code", error_code)
                self.end_headers()
                self.wfile.write(data)

            def _token(self) -> str | None:
                auth = self.headers.get("authorization", "")
                return auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None

            def _auth(self, write: bool) -> bool:
                token = self._token()
                if token not in (WRITE, READ):
                    self._reply(401, {"error": "Invalid credentials in Authorization header"})
                    return False
                if write and token != WRITE:
                    self._reply(403, {"error": "You don't have the rights to write to this repo"})
                    return False
                return True

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _route(self):
                """(repo_id, action, rest) for /api/datasets/OWNER/NAME[/ACTION[/REST]]."""
                parts = [unquote(p) for p in urlparse(self.path).path.split("/")[1:]]
                if parts[:2] != ["api", "datasets"] or len(parts) < 4:
                    return None, None, None
                return f"{parts[2]}/{parts[3]}", (parts[4] if len(parts) > 4 else ""), "/".join(parts[5:])

            def _repo(self, repo_id, branch=None):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._reply(404, {"error": "Repository not found"}, "RepoNotFound")
                    return None
                if branch is not None and branch not in repo["branches"]:
                    self._reply(404, {"error": f"Invalid rev id: {branch}"}, "RevisionNotFound")
                    return None
                return repo

            def do_GET(self):
                hub.requests.append(("GET", self.path))
                repo_id, action, rest = self._route()
                if repo_id is None or not self._auth(write=False):
                    return self._reply(404, {"error": "unknown route"}) if repo_id is None else None
                if action == "tree":
                    branch = rest.split("/")[0]
                    if (repo := self._repo(repo_id, branch)) is None:
                        return
                    files = repo["branches"][branch]
                    return self._reply(200, [
                        {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                        for path, data in sorted(files.items())
                    ])
                if action == "discussions":  # get_discussion_details of a pull request
                    if (repo := self._repo(repo_id)) is None:
                        return
                    num = int(rest)
                    pr = repo.get("prs", {}).get(num)
                    if pr is None:
                        return self._reply(404, {"error": "Discussion not found"})
                    return self._reply(200, {
                        "title": pr["title"], "num": num, "author": {"name": "me"},
                        "createdAt": "2026-01-01T00:00:00.000Z", "status": pr["status"],
                        "repo": {"name": repo_id, "type": "dataset"}, "isPullRequest": True, "events": [],
                        "changes": {"base": "main"}, "filesWithConflicts": [], "diff": "",
                    })
                if action in ("", "revision"):  # repo_info
                    if (repo := self._repo(repo_id)) is None:
                        return
                    return self._reply(200, {"id": repo_id, "private": repo["private"], "sha": "0" * 40})
                self._reply(404, {"error": "unknown route"})

            def do_POST(self):
                hub.requests.append(("POST", self.path))
                body = self._body()
                path = urlparse(self.path).path
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                if path == "/api/repos/create":
                    if not self._auth(write=True):
                        return
                    payload = json.loads(body)
                    assert payload["type"] == "dataset"
                    repo_id = f"{payload['organization']}/{payload['name']}"
                    if repo_id in hub.repos:
                        return self._reply(409, {"error": "You already created this dataset repo", "url": f"{hub.endpoint}/datasets/{repo_id}"})
                    hub.add_repo(repo_id, {}, private=payload.get("visibility") == "private")
                    return self._reply(200, {"url": f"{hub.endpoint}/datasets/{repo_id}", "name": repo_id})
                repo_id, action, rest = self._route()
                if repo_id is None:
                    return self._reply(404, {"error": "unknown route"})
                if not self._auth(write=True):
                    return
                if action == "branch":
                    if (repo := self._repo(repo_id)) is None:
                        return
                    if rest in repo["branches"]:
                        return self._reply(409, {"error": "Reference already exists"})
                    start = (json.loads(body) if body else {}).get("startingPoint", "main")
                    repo["branches"][rest] = dict(repo["branches"][start])
                    return self._reply(200, {})
                if action == "discussions":
                    if (repo := self._repo(repo_id)) is None:
                        return
                    prs = repo.setdefault("prs", {})
                    if rest == "":  # open a pull request: refs/pr/N starts as main
                        payload = json.loads(body)
                        assert payload["pullRequest"] is True
                        num = len(prs) + 1
                        prs[num] = {"title": payload["title"], "status": "open"}
                        repo["branches"][f"refs/pr/{num}"] = dict(repo["branches"]["main"])
                        return self._reply(200, {"num": num})
                    num, verb = rest.split("/")
                    pr = prs.get(int(num))
                    if verb != "merge" or pr is None or pr["status"] != "open":
                        return self._reply(400, {"error": "cannot do that to this discussion"})
                    pr["status"] = "merged"
                    hub.set_branch(repo, "main", dict(repo["branches"][f"refs/pr/{num}"]))
                    hub.merged.append(int(num))
                    return self._reply(200, {})
                if action == "preupload":
                    if self._repo(repo_id, rest) is None:
                        return
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                    ]})
                if action == "commit":
                    if (repo := self._repo(repo_id, rest)) is None:
                        return
                    hub.received += 1
                    if hub.cut_next_commit or hub.received == hub.cut_commit_number:  # the network drops, no answer
                        hub.cut_next_commit = False
                        self.close_connection = True
                        return
                    lines = [json.loads(line) for line in body.decode().splitlines() if line]
                    commit = {"repo_id": repo_id, "revision": rest, "header": lines[0]["value"], "added": {}, "deleted": []}
                    for line in lines[1:]:
                        value = line["value"]
                        if line["key"] == "file":
                            assert value["encoding"] == "base64"
                            commit["added"][value["path"]] = base64.b64decode(value["content"])
                        elif line["key"] == "deletedFile":
                            commit["deleted"].append(value["path"])
                        else:
                            return self._reply(400, {"error": f"the fake Hub does not take {line['key']}"})
                    files = dict(repo["branches"][rest])
                    for deleted in commit["deleted"]:
                        files.pop(deleted)
                    files.update(commit["added"])
                    hub.set_branch(repo, rest, files)  # applied all at once, like a git commit
                    hub.commits.append(commit)
                    oid = hashlib.sha1(json.dumps(sorted(files)).encode() + str(len(hub.commits)).encode()).hexdigest()
                    return self._reply(200, {"commitUrl": f"{hub.endpoint}/datasets/{repo_id}/commit/{oid}", "commitOid": oid})
                self._reply(404, {"error": "unknown route"})

        return Handler


@pytest.fixture
def hub(monkeypatch):
    """A fake Hub, online mode (conftest sets HF_HUB_OFFLINE=1 for everything else), HF_ENDPOINT pointing at it."""
    server = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)  # what HF_ENDPOINT sets when huggingface_hub loads
    yield server
    server.close()


@pytest.fixture
def release(tiny_release) -> Path:
    return tiny_release


@pytest.fixture
def folder(release_copy) -> Path:
    return release_copy


def local_bytes(folder: Path) -> dict[str, bytes]:
    return {path: file.read_bytes() for path, file in release_files(folder).items()}


def card_yaml(content: bytes) -> dict:
    return yaml.safe_load(content.decode().split("---\n")[1])


def test_push_is_one_commit_byte_equal_to_the_folder(hub, release):
    info = uge_hf.push_release(release, "me/cifar-uge", token=WRITE, endpoint=hub.endpoint)
    (commit,) = hub.commits
    assert commit["repo_id"] == "me/cifar-uge" and commit["revision"] == "main" and commit["deleted"] == []
    assert commit["added"] == local_bytes(release)  # every file, byte for byte, in ONE commit
    assert set(commit["added"]) >= {"README.md", "uge_config.json", "preview.png", "data/train-00000-of-00001.parquet",
                                    "authorized/resnet18-w4-seed0.safetensors", "authorized/resnet18-w4-seed0.json"}
    assert card_yaml(commit["added"]["README.md"])["uge"] == read_card(release).to_dict()  # every uge: field intact
    assert "resnet18-w4-seed0" in commit["header"]["summary"]
    assert hub.files("me/cifar-uge") == {".gitattributes": GITATTRIBUTES, **local_bytes(release)}
    assert hub.repos["me/cifar-uge"]["private"] is False
    assert info.commit_url.startswith(f"{hub.endpoint}/datasets/me/cifar-uge/commit/")


def test_what_was_pushed_loads_and_verifies(hub, release, tmp_path):
    uge_hf.push_release(release, "me/cifar-uge", token=WRITE, endpoint=hub.endpoint)
    received = tmp_path / "downloaded"  # what a user gets from the Hub: the received files, laid out again
    for path, data in hub.files("me/cifar-uge").items():
        (received / path).parent.mkdir(parents=True, exist_ok=True)
        (received / path).write_bytes(data)
    assert all(check.ok for check in uge_hf.verify_release(received))
    assert load_dataset(str(received))["train"].num_rows == 32
    assert type(uge_hf.load_authorized(received)).__name__ == "ResNet18"


def test_private_repo_on_a_new_branch(hub, release):
    uge_hf.push_release(release, "me/secret", private=True, revision="v1", token=WRITE, endpoint=hub.endpoint,
                        commit_message="first release")
    repo = hub.repos["me/secret"]
    assert repo["private"] is True
    assert repo["branches"]["main"] == {".gitattributes": GITATTRIBUTES}  # main untouched
    assert repo["branches"]["v1"] == {".gitattributes": GITATTRIBUTES, **local_bytes(release)}
    (commit,) = hub.commits
    assert commit["revision"] == "v1" and commit["header"]["summary"] == "first release"
    uge_hf.push_release(release, "me/secret", revision="v1", token=WRITE, endpoint=hub.endpoint)  # branch exists now
    assert len(hub.commits) == 2 and hub.commits[1]["revision"] == "v1"


def test_a_new_release_replaces_an_older_one_including_stale_shards(hub, release):
    hub.add_repo("me/cifar-uge", {"README.md": b"---\nuge: {}\n---\n", "uge_config.json": b"{}",
                                  "data/train-00000-of-00002.parquet": b"old", "data/train-00001-of-00002.parquet": b"old"})
    uge_hf.push_release(release, "me/cifar-uge", token=WRITE, endpoint=hub.endpoint)
    (commit,) = hub.commits
    assert sorted(commit["deleted"]) == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert hub.files("me/cifar-uge") == {".gitattributes": GITATTRIBUTES, **local_bytes(release)}


def test_a_repo_with_other_content_is_refused_unless_forced(hub, release):
    hub.add_repo("me/photos", {"README.md": b"# my photos\n", "photos.csv": b"a,b\n"})
    with pytest.raises(UgeError, match=r"not a uge-hf release \(README.md, photos.csv\).*--force"):
        uge_hf.push_release(release, "me/photos", token=WRITE, endpoint=hub.endpoint)
    assert hub.commits == [] and hub.files("me/photos")["photos.csv"] == b"a,b\n"
    uge_hf.push_release(release, "me/photos", token=WRITE, endpoint=hub.endpoint, force=True)
    assert hub.commits[0]["deleted"] == ["photos.csv"]
    assert hub.files("me/photos") == {".gitattributes": GITATTRIBUTES, **local_bytes(release)}


def test_connection_cut_during_the_commit_publishes_nothing_and_a_rerun_completes(hub, release):
    hub.cut_next_commit = True
    with pytest.raises(UgeError, match="connection .* was lost while uploading the commit.*run the same command again"):
        uge_hf.push_release(release, "me/cifar-uge", token=WRITE, endpoint=hub.endpoint)
    assert hub.commits == [] and hub.files("me/cifar-uge") == {".gitattributes": GITATTRIBUTES}
    uge_hf.push_release(release, "me/cifar-uge", token=WRITE, endpoint=hub.endpoint)
    assert hub.files("me/cifar-uge") == {".gitattributes": GITATTRIBUTES, **local_bytes(release)}


@pytest.mark.parametrize(
    "token, message",
    [("hf_nonsense", r"refused the token .*\(401\)"), (READ, r"no write permission on me/cifar-uge \(403")],
)
def test_refused_tokens_are_one_line_errors(hub, release, token, message):
    with pytest.raises(UgeError, match=message) as error:
        uge_hf.push_release(release, "me/cifar-uge", token=token, endpoint=hub.endpoint)
    assert "\n" not in str(error.value) and hub.commits == []


def test_unreachable_hub(release, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    closed = FakeHub()
    closed.close()  # a port nothing listens on any more
    with pytest.raises(UgeError, match="could not reach the Hub .* while creating the dataset repo.*nothing was published"):
        uge_hf.push_release(release, "me/cifar-uge", token=WRITE, endpoint=closed.endpoint)


def test_offline_and_no_token_fail_before_any_request(hub, release, monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UgeError, match="offline mode is on"):
        uge_hf.push_release(release, "me/cifar-uge", token=WRITE, endpoint=hub.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(UgeError, match="no Hugging Face token.*hf auth login.*HF_TOKEN"):
        uge_hf.push_release(release, "me/cifar-uge", endpoint=hub.endpoint)
    assert hub.requests == []


def test_token_from_hf_token_env(hub, release, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE)
    uge_hf.push_release(release, "me/cifar-uge", endpoint=hub.endpoint)
    assert len(hub.commits) == 1


def test_a_release_that_fails_verification_is_not_pushed(hub, folder):
    card = folder / "README.md"
    text = card.read_text()
    real = read_card(folder).authorized[0].init_sha256
    card.write_text(text.replace(real, "ab" * 32))
    with pytest.raises(UgeError, match="refusing to publish .*fails verification.*weights resnet18-w4-seed0"):
        uge_hf.push_release(folder, "me/cifar-uge", token=WRITE, endpoint=hub.endpoint)
    assert hub.requests == []


@pytest.mark.parametrize("repo_id", ["no-owner", "me/bad name", "me/x/y", "me/a..b", "-me/x"])
def test_invalid_repo_ids(repo_id):
    with pytest.raises(UgeError, match="invalid Hub repo id"):
        check_repo_id(repo_id)


def test_push_command(hub, release):
    result = runner.invoke(app, ["push", str(release), "me/cli-uge", "--token", WRITE, "--private", "--message", "hello"])
    assert result.exit_code == 0, result.output
    assert f"published {release} to me/cli-uge in one commit: {hub.endpoint}/datasets/me/cli-uge/commit/" in result.output
    assert hub.commits[0]["header"]["summary"] == "hello" and hub.repos["me/cli-uge"]["private"] is True
    refused = runner.invoke(app, ["push", str(release), "me/cli-uge", "--token", READ])
    assert refused.exit_code == 1 and "no write permission" in refused.output and "Traceback" not in refused.output


def test_protect_with_push(hub, tmp_path, monkeypatch):
    source = tmp_path / "source"
    make_image_dataset(16, seed=0).to_parquet(str(source / "data" / "train-00000-of-00001.parquet"))
    monkeypatch.setenv("HF_TOKEN", WRITE)
    output = tmp_path / "out"
    result = runner.invoke(app, ["protect", str(source), *TINY_FLAGS, "--output", str(output), "--push", "me/made", "--revision", "v1"])
    assert result.exit_code == 0, result.output
    assert "published" in result.output
    assert hub.files("me/made", "v1") == {".gitattributes": GITATTRIBUTES, **local_bytes(output)}


def test_protect_with_a_failed_push_keeps_the_release_and_says_how_to_publish_it(hub, tmp_path, monkeypatch):
    source = tmp_path / "source"
    make_image_dataset(16, seed=0).to_parquet(str(source / "data" / "train-00000-of-00001.parquet"))
    monkeypatch.setenv("HF_TOKEN", READ)
    output = tmp_path / "out"
    result = runner.invoke(app, ["protect", str(source), *TINY_FLAGS, "--output", str(output), "--push", "me/made"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no write permission on me/made" in result.output
    assert f"publish it with `uge-hf push {output} me/made`" in result.output
    assert hub.commits == [] and (output / "README.md").is_file()
    later = runner.invoke(app, ["push", str(output), "me/made", "--token", WRITE])
    assert later.exit_code == 0, later.output
    assert hub.files("me/made") == {".gitattributes": GITATTRIBUTES, **local_bytes(output)}


@pytest.mark.parametrize(
    "args, message",
    [(["--push", "not a repo"], "invalid Hub repo id"), (["--revision", "v1"], "only apply with --push"),
     (["--private"], "only apply with --push")],
)
def test_protect_push_mistakes_fail_before_training(tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("uge_hf.pipeline.protect", lambda *a, **k: pytest.fail("training started"))
    result = runner.invoke(app, ["protect", str(tmp_path / "anything"), *args, "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


# --- issue 14: a release of more files than one commit should hold ----------------------------------------------------


@pytest.fixture
def small_commits(monkeypatch):
    """Three files per commit, so the 7-file tiny release needs 3 commits (a real release: shards > 100)."""
    from uge_hf import hub

    monkeypatch.setattr(hub, "MAX_FILES_PER_COMMIT", 3)


def test_a_large_release_reaches_main_in_one_step_through_a_pull_request(hub, release, small_commits):
    old = {"README.md": b"---\nuge: {}\n---\n", "uge_config.json": b"{}",
           "data/train-00000-of-00002.parquet": b"old", "data/train-00001-of-00002.parquet": b"old"}
    hub.add_repo("me/cifar-uge", old)
    info = uge_hf.push_release(release, "me/cifar-uge", token=WRITE, endpoint=hub.endpoint)
    local = local_bytes(release)
    operations = len(local) + 2  # + the two stale shards deleted
    assert [c["revision"] for c in hub.commits] == ["refs/pr/1"] * -(-operations // 3)  # none straight to main
    assert all(len(c["added"]) + len(c["deleted"]) <= 3 for c in hub.commits)
    assert sorted(d for c in hub.commits for d in c["deleted"]) == sorted(p for p in old if p.startswith("data/"))
    assert hub.merged == [1] and hub.repos["me/cifar-uge"]["prs"][1]["status"] == "merged"
    # main went from the old release to the new one in ONE step: no state in between
    assert hub.main_states == [{".gitattributes": GITATTRIBUTES, **local}]
    assert info.pr_num == 1
    assert all(check.ok for check in uge_hf.verify_release(release))


def test_a_large_push_cut_midway_leaves_main_unchanged_and_a_rerun_completes(hub, release, small_commits):
    hub.add_repo("me/cifar-uge", {"README.md": b"---\nuge: {}\n---\n", "uge_config.json": b"{}"})
    before = dict(hub.files("me/cifar-uge"))
    hub.cut_commit_number = 2
    with pytest.raises(UgeError, match=r"main is unchanged .*pull request #1 is merged.*close that pull request"):
        uge_hf.push_release(release, "me/cifar-uge", token=WRITE, endpoint=hub.endpoint)
    assert hub.files("me/cifar-uge") == before and hub.main_states == [] and hub.merged == []
    uge_hf.push_release(release, "me/cifar-uge", token=WRITE, endpoint=hub.endpoint)
    assert hub.merged == [2] and hub.files("me/cifar-uge") == {".gitattributes": GITATTRIBUTES, **local_bytes(release)}


def test_a_large_release_to_a_branch_arrives_in_several_commits(hub, release, small_commits):
    uge_hf.push_release(release, "me/cifar-uge", revision="v1", token=WRITE, endpoint=hub.endpoint)
    assert {c["revision"] for c in hub.commits} == {"v1"} and len(hub.commits) == 3 and hub.merged == []
    assert hub.files("me/cifar-uge", "v1") == {".gitattributes": GITATTRIBUTES, **local_bytes(release)}
    assert hub.files("me/cifar-uge") == {".gitattributes": GITATTRIBUTES}  # main untouched
