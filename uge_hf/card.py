"""The release's dataset card: a YAML `uge:` block (machine-readable) and prose rendered from `cards/`."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import DatasetCard, DatasetCardData

from .errors import UgeError

if TYPE_CHECKING:
    from datasets import DatasetInfo

CARD_SCHEMA_VERSION = 2  # 2: `method`, private authorized weights (`weights: null`, `private: true`)
READABLE_SCHEMA_VERSIONS = (1, 2)  # a version-1 card is a gradient-matching release with public weights
TEMPLATE = "uge_dataset_card.md"


def render_card(uge: dict, dataset_info: "DatasetInfo", source: str) -> DatasetCard:
    """The card for a release whose `uge:` block is `uge` and whose parquet shards `dataset_info` describes.

    The `dataset_info` YAML (features, rows and bytes per split, as `push_to_hub` writes it) also makes the
    `datasets` cache key of the folder depend on its content: without it, two local releases in folders of the
    same name share one cache entry and `load_dataset` can return the older one.
    """
    from datasets.info import DatasetInfosDict

    splits = list(dataset_info.splits)
    card_data = DatasetCardData(
        pretty_name=f"{source} (ungeneralizable, authorized: {', '.join(n['spec'] for n in uge['authorized'])})",
        task_categories=["image-classification"],
        tags=["uge", "ungeneralizable-examples", "uge-hf"],
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": split, "path": f"data/{split}-*"} for split in splits],
            }
        ],
        uge=uge,
    )
    DatasetInfosDict({"default": dataset_info}).to_dataset_card_data(card_data)
    template = files("uge_hf").joinpath("cards", TEMPLATE).read_text(encoding="utf-8")
    return DatasetCard.from_template(
        card_data, template_str=template, pretty_name=card_data.pretty_name, source=source, uge=uge
    )


def read_uge_block(release_dir: str | Path) -> dict:
    """The `uge:` block of a release folder's card, checked for its schema version."""
    path = Path(release_dir) / "README.md"
    if not path.is_file():
        raise UgeError(f"{release_dir} has no README.md: not a uge-hf release")
    uge = DatasetCard.load(path).data.to_dict().get("uge")
    if not isinstance(uge, dict):
        raise UgeError(f"the card {path} has no 'uge:' block: not a uge-hf release")
    if uge.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
        raise UgeError(
            f"the card {path} has uge schema version {uge.get('schema_version')!r}; "
            f"this uge-hf reads versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}"
        )
    uge.setdefault("method", "gradient-matching")
    return uge
