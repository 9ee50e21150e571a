"""The card's `uge:` block as one typed object: written, read back equal, checked in one place."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from uge_hf.card import AuthorizedEntry, UgeBlock, read_card
from uge_hf.config import Recipe
from uge_hf.errors import UgeError


def raw_block(release) -> dict:
    """The `uge:` mapping exactly as the README's YAML holds it."""
    text = (release / "README.md").read_text()
    return yaml.safe_load(text.split("---\n")[1])["uge"]


@pytest.mark.parametrize("fixture", ["tiny_release", "keyed_release"])
def test_a_written_block_reads_back_equal_and_writes_the_same_yaml(fixture, request):
    release = request.getfixturevalue(fixture)
    raw = raw_block(release)
    card = read_card(release)
    assert card.to_dict() == raw  # same keys, same order of the generic ones, same values
    assert list(card.to_dict()) == list(raw)
    assert UgeBlock.from_dict(card.to_dict()) == card
    assert isinstance(card.recipe, Recipe) and all(isinstance(net, AuthorizedEntry) for net in card.authorized)


def test_the_typed_fields_hold_what_the_run_declared(tiny_release, keyed_release):
    paper, keyed = read_card(tiny_release), read_card(keyed_release)
    assert (paper.method, keyed.method) == ("gradient-matching", "keyed")
    assert paper.image_column == "picture" and paper.label_column == "category"
    assert paper.image_size == (16, 16) and paper.num_classes == 4
    assert paper.pixel_bound == 10 and paper.rho == 0.04
    (net,) = paper.authorized
    assert (net.spec, net.arch, net.width, net.seed, net.private) == ("resnet18-w4-seed0", "resnet18", 4, 0, False)
    assert net.weights == "authorized/resnet18-w4-seed0.safetensors"
    assert keyed.authorized[0].private and keyed.authorized[0].input_stage == "key"
    assert set(paper.method_fields) == {"encoder", "loss_weights", "generator_released"}
    assert set(keyed.method_fields) == {"key"}
    assert paper.results.test_split == "test" and "feature_cosine" in paper.results.method_results
    assert paper.results.perturbation["train"].linf_levels <= paper.pixel_bound


def test_a_new_methods_fields_travel_through_unchanged(tiny_release):
    """A method's own block (here a made-up `future:` method's) and results need no edit of the card classes."""
    raw = raw_block(tiny_release)
    raw = {**raw, "method": "future", "future": {"strength": 3, "layers": [1, 2]}}
    raw["results"] = {**raw["results"], "future_margin": 0.25}
    card = UgeBlock.from_dict(raw)
    assert card.method_fields["future"] == {"strength": 3, "layers": [1, 2]}
    assert card.results.method_results["future_margin"] == 0.25
    assert card.to_dict()["future"] == raw["future"] and UgeBlock.from_dict(card.to_dict()) == card


def test_a_lock_card_needs_the_fields_unlocking_reads(lock_release):
    raw = raw_block(lock_release)
    assert UgeBlock.from_dict(raw).method_fields["lock"]["unlock_column"] == "unlock"
    raw["lock"] = {k: v for k, v in raw["lock"].items() if k != "key_sha256"}
    with pytest.raises(UgeError, match=r"uge\.lock\.key_sha256 is missing or not a str"):
        UgeBlock.from_dict(raw)


def test_a_schema_1_card_reads_as_a_gradient_matching_release(tiny_release):
    raw = {k: v for k, v in raw_block(tiny_release).items() if k != "method"}
    card = UgeBlock.from_dict({**raw, "schema_version": 1})
    assert card.method == "gradient-matching" and card.schema_version == 1


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("pixel_bound"), r"uge\.pixel_bound is missing or not a int"),
    (lambda b: b.update(schema_version=99), "uge schema version 99"),
    (lambda b: b.update(authorized=[]), r"uge\.authorized is empty"),
    (lambda b: b["authorized"][0].update(width=8), r"arch/width/seed .* do not match its spec resnet18-w4-seed0"),
    (lambda b: b["authorized"][0].update(spec="nope"), r"uge\.authorized\[0\]\.spec is invalid"),
    (lambda b: b["authorized"][0].update(num_classes=3), r"num_classes is 3 but there are 4 class names"),
    (lambda b: b["authorized"][0].pop("weights"), "names no weights file and is not marked private"),
    (lambda b: b["recipe"].update(lr=-1), r"uge\.recipe is not a valid recipe"),
    (lambda b: b["input"].update(image_size=[16]), r"uge\.input\.image_size is \[16\], not \[height, width\]"),
    (lambda b: b.update(columns={"image": "picture"}), r"uge\.columns is .* not \{image: NAME, label: NAME\}"),
    (lambda b: b["results"]["perturbation"]["train"].pop("psnr_db"), r"results\.perturbation\.train\.psnr_db"),
])
def test_a_wrong_field_is_one_error_naming_it(tiny_release, change, message):
    raw = raw_block(tiny_release)
    change(raw)
    with pytest.raises(UgeError, match=message):
        UgeBlock.from_dict(raw)


def test_a_private_secret_init_entry_has_no_seed_and_round_trips():
    entry = AuthorizedEntry.from_spec("resnet18-w4-seed0", 4, "ab" * 32, secret_seed=True, private=True)
    assert entry.seed is None and entry.to_dict()["private"] is True and "input_stage" not in entry.to_dict()
    assert AuthorizedEntry.from_dict(entry.to_dict(), 0, 4) == entry
    with pytest.raises(UgeError, match=r"authorized\[0\]\.seed is missing"):
        AuthorizedEntry.from_dict(dataclasses.replace(entry, private=False, weights="w").to_dict(), 0)


def test_read_card_refuses_a_folder_that_is_not_a_release(tmp_path):
    with pytest.raises(UgeError, match="has no README.md: not a uge-hf release"):
        read_card(tmp_path)
    (tmp_path / "README.md").write_text("---\nfoo: [\n---\n")
    with pytest.raises(UgeError, match="the card's YAML cannot be read"):
        read_card(tmp_path)
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n")
    with pytest.raises(UgeError, match="has no 'uge:' block"):
        read_card(tmp_path)


def test_the_card_header_follows_the_hubs_metadata_rules(keyed_release, lock_release, tiny_release):
    """Hub metadata: a short pretty_name, the size bucket, the paper linked by its arXiv URL, no made-up URL."""
    import re

    from huggingface_hub import DatasetCard

    from uge_hf.card import PAPER_URL

    for release in (keyed_release, lock_release, tiny_release):
        card = DatasetCard.load(release / "README.md")
        assert card.data.pretty_name == "dataset (ungeneralizable)"  # a dataset object's name; no specs, no path
        assert card.data.size_categories == ["n<1K"]  # 44 rows
        assert card.data.license is None and card.data.source_datasets is None  # a dataset object: nothing known
        assert PAPER_URL in card.text
        assert set(re.findall(r"https?://[^\s)\]>]+", card.content)) == {PAPER_URL}, release


@pytest.mark.parametrize("rows, bucket", [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (50_000, "10K<n<100K"),
                                          (1_281_167, "1M<n<10M"), (10**12, "n>1T")])
def test_size_category_uses_the_hubs_buckets(rows, bucket):
    from uge_hf.card import size_category

    assert size_category(rows) == bucket


def test_a_hub_sources_card_keeps_its_license_and_names_it(keyed_release, monkeypatch):
    """A Hub id: `source_datasets`, a link to it, and the license of its card (read through huggingface_hub)."""
    import huggingface_hub
    from datasets import DatasetInfo, Features, SplitDict, SplitInfo, Value

    from uge_hf.card import render_card
    from uge_hf.data import source_metadata

    from .conftest import make_image_dataset

    loaded = {"train": make_image_dataset(4)}
    monkeypatch.setattr(huggingface_hub.DatasetCard, "load",
                        classmethod(lambda cls, repo: cls("---\nlicense: cc-by-4.0\n---\n") if repo == "someone/pets"
                                    else (_ for _ in ()).throw(OSError("offline"))))
    source = source_metadata("someone/pets", loaded)
    assert (source.name, source.hub_id, source.license) == ("someone/pets", "someone/pets", "cc-by-4.0")
    assert source_metadata("someone/other", loaded).license is None  # an unreadable card costs the license only

    info = DatasetInfo(features=Features({"x": Value("int64")}), splits=SplitDict())
    info.splits.add(SplitInfo("train", num_bytes=1, num_examples=12_000))
    card = render_card(raw_block(keyed_release), info, source.name, license=source.license, hub_id=source.hub_id)
    assert card.data.license == "cc-by-4.0" and card.data.source_datasets == ["someone/pets"]
    assert card.data.size_categories == ["10K<n<100K"] and card.data.pretty_name == "someone/pets (ungeneralizable)"
    assert "[`someone/pets`](https://huggingface.co/datasets/someone/pets)" in card.text
