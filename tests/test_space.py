"""The Space folder as the Hub reads it: the YAML header of spaces/README.md against the Hub's documented rules."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, metadata, version
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

SPACES = Path(__file__).resolve().parent.parent / "spaces"
# https://huggingface.co/docs/hub/spaces-config-reference
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def header() -> dict:
    text = (SPACES / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def requirements() -> list[Requirement]:
    lines = (SPACES / "requirements.txt").read_text().splitlines()
    return [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]


def test_the_space_header_follows_the_hubs_rules():
    config = header()
    assert config["sdk"] == "gradio" and (SPACES / config["app_file"]).is_file()
    assert isinstance(config["short_description"], str) and len(config["short_description"]) <= 60  # the Hub refuses longer
    assert config["colorFrom"] in COLORS and config["colorTo"] in COLORS
    assert isinstance(config["pinned"], bool) and config["license"] == config["license"].lower()
    # sdk_version: the gradio the demo is tested with; the SDK installs it, so requirements.txt must not pin another
    assert isinstance(config["sdk_version"], str) and config["sdk_version"] == version("gradio")
    assert "gradio" not in {canonicalize_name(r.name) for r in requirements()}


def test_the_space_python_version_is_one_every_package_supports():
    """`python_version` (a string: YAML reads 3.10 as 3.1) satisfies the Requires-Python of the gradio SDK and of
    every package in requirements.txt at the version tested here, and uge-hf's own."""
    declared = header()["python_version"]
    assert isinstance(declared, str) and re.fullmatch(r"3\.\d+", declared)
    python = Version(f"{declared}.0")
    pyproject = (SPACES.parent / "pyproject.toml").read_text()
    needs = {"uge-hf": re.search(r'requires-python = "([^"]+)"', pyproject).group(1)}
    for name in ["gradio", *(r.name for r in requirements())]:
        try:
            needs[name] = metadata(name).get("Requires-Python") or ""
        except PackageNotFoundError:  # not installed here: nothing known to check against
            continue
    refused = {name: spec for name, spec in needs.items() if python not in SpecifierSet(spec)}
    assert not refused, f"python_version {declared} is refused by {refused}"


def test_the_documented_upload_command_is_the_current_hf_cli():
    text = (SPACES / "README.md").read_text(encoding="utf-8")
    assert "huggingface-cli" not in text  # deprecated in favour of `hf`
    assert re.search(r"^hf upload \S+ \S+ \. --repo-type space$", text, flags=re.M)
