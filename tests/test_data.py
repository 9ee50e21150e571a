"""Tests for uge_hf.data: datasets -> tensors -> PIL images, and every user mistake as a UgeError."""

from __future__ import annotations

import datasets
import huggingface_hub.constants
import numpy as np
import PIL.Image
import pytest
import torch

from uge_hf.data import (
    class_names_and_encoder,
    infer_image_size,
    load_source,
    prepare_image,
    resolve_columns,
    source_label,
    to_pil_images,
    to_rgb,
    to_tensors,
)
from uge_hf.errors import UgeError


def random_image(width: int, height: int, seed: int, mode: str = "RGB") -> PIL.Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels).convert(mode)


def make_dataset(images: list, labels: list, label_feature=None, image_name="img", label_name="label"):
    label_feature = label_feature or datasets.ClassLabel(names=["cat", "dog", "frog"])
    features = datasets.Features({image_name: datasets.Image(), label_name: label_feature})
    return datasets.Dataset.from_dict({image_name: images, label_name: labels}, features=features)


def rgb_dataset(n: int = 4, width: int = 6, height: int = 5) -> datasets.Dataset:
    return make_dataset([random_image(width, height, seed=i) for i in range(n)], [i % 3 for i in range(n)])


# --- pixels and shapes -------------------------------------------------------------------------------


def test_rgb_pixels_survive_exactly():
    images = [random_image(6, 5, seed=i) for i in range(4)]
    t = to_tensors(make_dataset(images, [0, 1, 2, 0]), "img", "label")
    assert t.images.dtype == torch.uint8 and t.images.shape == (4, 3, 5, 6)
    assert t.image_size == (5, 6)
    for tensor, image in zip(t.images, images):
        assert np.array_equal(tensor.permute(1, 2, 0).numpy(), np.asarray(image))
    assert t.labels.dtype == torch.int64 and t.labels.tolist() == [0, 1, 2, 0]
    assert t.class_names == ["cat", "dog", "frog"]


def test_other_modes_become_rgb():
    gray = PIL.Image.new("L", (4, 3), 77)
    rgba = PIL.Image.new("RGBA", (4, 3), (10, 20, 30, 0))
    palette = PIL.Image.new("RGB", (4, 3), (200, 100, 50)).convert("P")
    t = to_tensors(make_dataset([gray, rgba, palette], [0, 1, 2]), "img", "label")
    assert t.images.dtype == torch.uint8 and t.images.shape == (3, 3, 3, 4)
    assert (t.images[0] == 77).all()
    # Alpha is dropped, not composited: a transparent pixel keeps its stored colour.
    assert t.images[1, :, 0, 0].tolist() == [10, 20, 30]
    assert t.images[2, :, 0, 0].tolist() == list(palette.convert("RGB").getpixel((0, 0)))


def test_sixteen_bit_is_scaled_not_clipped():
    image = PIL.Image.fromarray(np.full((2, 2), 32896, dtype=np.uint16))  # 128 * 257
    assert image.mode.startswith("I")
    assert (prepare_image(image, (2, 2)) == 128).all()


def test_mixed_sizes_resize_to_most_common():
    # PIL sizes are (W, H): the common size is 6 wide and 8 high.
    common = [random_image(6, 8, seed=i) for i in range(3)]
    odd = random_image(4, 4, seed=9)
    ds = make_dataset([common[0], odd, common[1], common[2]], [0, 1, 2, 0])
    assert infer_image_size(ds, "img") == (8, 6)
    t = to_tensors(ds, "img", "label")
    assert t.image_size == (8, 6) and t.images.shape == (4, 3, 8, 6)
    expected = np.asarray(odd.resize((6, 8), resample=PIL.Image.Resampling.BICUBIC))
    assert np.array_equal(t.images[1].permute(1, 2, 0).numpy(), expected)
    assert np.array_equal(t.images[0].permute(1, 2, 0).numpy(), np.asarray(common[0]))


def test_size_tie_goes_to_first_seen():
    ds = make_dataset([random_image(3, 2, 0), random_image(5, 4, 1), random_image(5, 4, 2), random_image(3, 2, 3)],
                      [0, 1, 0, 1])
    assert infer_image_size(ds, "img") == (2, 3)


def test_explicit_image_size():
    t = to_tensors(rgb_dataset(2), "img", "label", image_size=(10, 7))
    assert t.images.shape == (2, 3, 10, 7) and t.image_size == (10, 7)


def test_to_pil_images_is_lossless():
    t = to_tensors(rgb_dataset(3), "img", "label")
    back = to_pil_images(t.images)
    assert [image.mode for image in back] == ["RGB"] * 3
    assert torch.equal(torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in back]), t.images)


# --- columns and labels ------------------------------------------------------------------------------


def test_renamed_columns_are_detected():
    ds = make_dataset([random_image(4, 4, i) for i in range(2)], [0, 1], image_name="picture", label_name="category")
    assert resolve_columns(ds) == ("picture", "category")


def test_explicit_columns_override():
    features = datasets.Features({
        "img": datasets.Image(),
        "coarse": datasets.ClassLabel(names=["animal", "vehicle"]),
        "fine": datasets.ClassLabel(names=["cat", "dog", "car"]),
    })
    ds = datasets.Dataset.from_dict({"img": [random_image(4, 4, 0)], "coarse": [0], "fine": [1]}, features=features)
    with pytest.raises(UgeError, match="--label-column"):
        resolve_columns(ds)
    assert resolve_columns(ds, label_column="fine") == ("img", "fine")
    assert resolve_columns(ds, image_column="img", label_column="coarse") == ("img", "coarse")


def test_label_column_found_by_name():
    ds = make_dataset([random_image(4, 4, i) for i in range(2)], ["a", "b"], datasets.Value("string"),
                      label_name="target")
    assert resolve_columns(ds) == ("img", "target")


def test_string_labels_sorted():
    ds = make_dataset([random_image(4, 4, i) for i in range(4)], ["dog", "cat", "bird", "cat"],
                      datasets.Value("string"))
    names, encode = class_names_and_encoder(ds, "label")
    assert names == ["bird", "cat", "dog"] and encode("dog") == 2
    assert to_tensors(ds, "img", "label").labels.tolist() == [2, 1, 0, 1]


def test_int_labels_without_classlabel_ranked_by_value():
    ds = make_dataset([random_image(4, 4, i) for i in range(4)], [10, 3, 7, 3], datasets.Value("int64"))
    names, encode = class_names_and_encoder(ds, "label")
    assert names == ["3", "7", "10"] and encode(10) == 2
    assert to_tensors(ds, "img", "label").labels.tolist() == [2, 0, 1, 0]


def test_other_split_uses_training_class_names():
    train = make_dataset([random_image(4, 4, i) for i in range(3)], ["a", "b", "c"], datasets.Value("string"))
    test = make_dataset([random_image(4, 4, i) for i in range(2)], ["c", "c"], datasets.Value("string"))
    names, _ = class_names_and_encoder(train, "label")
    t = to_tensors(test, "img", "label", class_names=names)
    assert t.labels.tolist() == [2, 2] and t.class_names == ["a", "b", "c"]
    unknown = make_dataset([random_image(4, 4, 0), random_image(4, 4, 1)], ["a", "zebra"], datasets.Value("string"))
    with pytest.raises(UgeError, match="row 1.*'zebra'"):
        to_tensors(unknown, "img", "label", class_names=names)


# --- loading -----------------------------------------------------------------------------------------


def test_dataset_and_datasetdict_sources():
    ds = rgb_dataset(2)
    assert list(load_source(ds)) == ["train"] and load_source(ds)["train"] is ds
    dd = datasets.DatasetDict({"train": ds, "test": ds})
    assert load_source(dd) is dd


def test_local_parquet_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    ds = rgb_dataset(4)
    (tmp_path / "data").mkdir()
    ds.to_parquet(str(tmp_path / "data/train-00000-of-00001.parquet"))
    with pytest.raises(UgeError, match="is a file: pass the dataset folder"):
        load_source(tmp_path / "data/train-00000-of-00001.parquet")
    loaded = load_source(tmp_path)
    assert list(loaded) == ["train"]
    assert resolve_columns(loaded["train"]) == ("img", "label")
    assert loaded["train"].features["label"].names == ["cat", "dog", "frog"]
    assert torch.equal(to_tensors(loaded["train"], "img", "label").images, to_tensors(ds, "img", "label").images)


def test_missing_local_path(tmp_path):
    with pytest.raises(UgeError, match="no such file or folder"):
        load_source(tmp_path / "nowhere")
    with pytest.raises(UgeError, match="no such file or folder"):
        load_source("./nowhere/at/all")


def test_hub_id_while_offline(tmp_path, monkeypatch):
    # The libraries read HF_HUB_OFFLINE at import, so the flags they already hold are patched too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UgeError, match="Hub could not be reached.*local folder"):
        load_source("someone/some-image-dataset")


# --- user mistakes -----------------------------------------------------------------------------------


def test_no_image_column():
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    with pytest.raises(UgeError, match="no image column.*--image-column"):
        resolve_columns(ds)


def test_no_label_column():
    features = datasets.Features({"img": datasets.Image(), "score": datasets.Value("float32")})
    ds = datasets.Dataset.from_dict({"img": [random_image(4, 4, 0)], "score": [0.5]}, features=features)
    with pytest.raises(UgeError, match="no label column.*--label-column"):
        resolve_columns(ds)
    with pytest.raises(UgeError, match="not class labels"):
        resolve_columns(ds, label_column="score")


def test_explicit_column_missing():
    ds = rgb_dataset(2)
    with pytest.raises(UgeError, match=r"--image-column 'photo'.*\['img', 'label'\]"):
        resolve_columns(ds, image_column="photo")
    with pytest.raises(UgeError, match="--label-column 'kind'"):
        resolve_columns(ds, label_column="kind")


def test_one_class_only():
    ds = make_dataset([random_image(4, 4, i) for i in range(3)], [1, 1, 1])
    with pytest.raises(UgeError, match="at least two classes"):
        to_tensors(ds, "img", "label")


def test_missing_label_names_row():
    ds = make_dataset([random_image(4, 4, i) for i in range(3)], ["a", None, "b"], datasets.Value("string"))
    with pytest.raises(UgeError, match="row 1 .*no label"):
        class_names_and_encoder(ds, "label")


def test_empty_split():
    with pytest.raises(UgeError, match="empty"):
        to_tensors(rgb_dataset(4).select([]), "img", "label")


def test_undecodable_image_names_row():
    images = [random_image(4, 4, i) for i in range(3)] + [{"bytes": b"not an image", "path": None}]
    ds = make_dataset(images, [0, 1, 2, 0])
    with pytest.raises(UgeError, match="could not decode the image in row 3 of column 'img'"):
        to_tensors(ds, "img", "label", image_size=(4, 4))
    with pytest.raises(UgeError, match="row 3"):
        infer_image_size(ds, "img")


# --- images that are arrays (issue 12) ---------------------------------------------------------------


def array_dataset(arrays: list[np.ndarray]) -> datasets.Dataset:
    """Images given as numpy arrays, as `datasets` stores them (int64 -> TIFF "I", float32 -> TIFF "F", ...)."""
    return make_dataset(arrays, [i % 3 for i in range(len(arrays))])


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.arange(64, dtype=np.int64).reshape(8, 8) * 4, np.arange(64).reshape(8, 8) * 4),  # 8-bit levels, kept
        (np.arange(64, dtype=np.float32).reshape(8, 8) / 63, np.rint(np.arange(64).reshape(8, 8) / 63 * 255)),  # [0, 1]
        (np.arange(64, dtype=np.float32).reshape(8, 8) * 4, np.arange(64).reshape(8, 8) * 4),  # float levels
        (np.arange(64, dtype=np.int32).reshape(8, 8) * 1000, np.rint(np.arange(64).reshape(8, 8) * 1000 / 257)),  # 16-bit
        (np.full((8, 8), 1000, dtype=np.uint16), np.full((8, 8), 4)),  # uint16: 16-bit by its dtype
    ],
)
def test_array_images_decode_by_their_range_and_dtype(array, expected):
    ds = array_dataset([array, array])
    assert ds.features["img"].decode  # stored by datasets, not by us: the modes it picks are "I", "F", "I;16"
    t = to_tensors(ds, "img", "label")
    for channel in range(3):
        assert np.array_equal(t.images[0, channel].numpy(), expected.astype(np.uint8))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((8, 8), -1.0, dtype=np.float32), r"pixels from -1 to -1; expected \[0, 1\] or \[0, 255\]"),
        (np.full((8, 8), 300.0, dtype=np.float32), "pixels from 300 to 300"),
        (np.full((8, 8), np.nan, dtype=np.float32), "NaN or infinite"),
        (np.full((8, 8), 70000, dtype=np.int64), "expected 0..255 or 0..65535"),
    ],
)
def test_array_images_out_of_any_range_are_errors_naming_the_row(array, message):
    good = np.zeros((8, 8), dtype=array.dtype)
    with pytest.raises(UgeError, match=f"row 1 of column 'img': .*{message}"):
        to_tensors(array_dataset([good, array]), "img", "label")


def test_to_rgb_modes():
    cmyk = PIL.Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # red in CMYK
    assert to_rgb(cmyk).getpixel((0, 0)) == (255, 0, 0)
    bilevel = PIL.Image.new("1", (4, 4), 1)
    assert to_rgb(bilevel).getpixel((0, 0)) == (255, 255, 255)
    la = PIL.Image.new("LA", (4, 4), (90, 0))
    assert to_rgb(la).getpixel((0, 0)) == (90, 90, 90)
    big_endian = PIL.Image.new("I;16B", (4, 4), 65535)
    assert to_rgb(big_endian).getpixel((0, 0)) == (255, 255, 255)


# --- inputs of the wrong type (issue 12) -------------------------------------------------------------


def test_wrong_python_inputs_name_what_is_accepted():
    import pandas

    accepted = "pass a datasets.Dataset, a DatasetDict, an IterableDataset\\(Dict\\), a local dataset folder or a Hub id"
    for value, hint in ((pandas.DataFrame({"a": [1]}), "Dataset.from_pandas"), ([1, 2], "Dataset.from_list"),
                        (None, ""), (3, ""), ({"x": 1}, "Dataset.from_dict")):
        with pytest.raises(UgeError, match=f"cannot load a dataset from {type(value).__name__}.*{hint}.*{accepted}"):
            load_source(value)


def test_streaming_datasets_load_as_an_iterable_dict_and_mixed_dicts_are_refused():
    """Streaming sources go to the shard writer (tests/test_sharded.py): load_source keeps them streaming."""
    streaming = rgb_dataset(2).to_iterable_dataset()
    for value in (streaming, datasets.IterableDatasetDict({"train": streaming}), {"train": streaming}):
        loaded = load_source(value)
        assert isinstance(loaded, datasets.IterableDatasetDict) and list(loaded) == ["train"]
    with pytest.raises(UgeError, match="a dict must hold one kind of split"):
        load_source({"train": streaming, "test": rgb_dataset(2)})
    from uge_hf.data import load_map_style  # the readers that index rows (verify, evaluate) still refuse one

    with pytest.raises(UgeError, match="streaming IterableDataset cannot be compared.*without streaming=True"):
        load_map_style(streaming)
    with pytest.raises(UgeError, match="streaming applies to a folder or Hub id"):
        load_source(rgb_dataset(2), streaming=True)


def test_a_dict_of_datasets_is_a_datasetdict_and_no_splits_is_an_error():
    ds = rgb_dataset(2)
    assert isinstance(load_source({"train": ds, "test": ds}), datasets.DatasetDict)
    with pytest.raises(UgeError, match="has no splits"):
        load_source(datasets.DatasetDict())


def test_source_label_is_never_an_absolute_path(tmp_path):
    (tmp_path / "my-data").mkdir()
    assert source_label(tmp_path / "my-data") == "my-data"
    assert source_label(str(tmp_path / "my-data") + "/") == "my-data"
    assert source_label("someone/cifar10") == "someone/cifar10"
    assert source_label(rgb_dataset(2)) == "dataset"
