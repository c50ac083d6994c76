"""captum_vit.data: image files of every mode, the model's preprocessing applied to
annotations, data sources and their bad input."""

from __future__ import annotations

import csv
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from helpers import write_scene_folder
from PIL import Image

from captum_vit import zoo
from captum_vit.data import (
    DataError,
    ImageDataset,
    Preprocessing,
    SceneDataset,
    boxes_to_mask,
    make_loader,
    read_image,
)


# ----------------------------------------------------------------- image modes
def _png_rgb16(pixels) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (PIL cannot write one)."""
    h, w = len(pixels), len(pixels[0])
    raw = b"".join(
        b"\x00" + b"".join(struct.pack(">HHH", *px) for px in row) for row in pixels
    )

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + tag + data + crc

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _palette_image(transparent: bool) -> Image.Image:
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    im.putpixel((1, 0), 1)
    if transparent:
        im.info["transparency"] = 0
    return im


# mode -> (writer(tmp) -> path, {(x, y): expected 8-bit RGB})
def _cases():
    def save(im, name, fmt=None):
        def write(tmp: Path) -> Path:
            p = tmp / name
            im.save(p, format=fmt)
            return p

        return write

    def raw(data: bytes, name: str):
        def write(tmp: Path) -> Path:
            p = tmp / name
            p.write_bytes(data)
            return p

        return write

    one = Image.new("1", (2, 1))
    one.putpixel((1, 0), 1)
    la = Image.new("LA", (3, 1))
    for x, px in enumerate([(100, 255), (100, 0), (100, 128)]):
        la.putpixel((x, 0), px)
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 0))
    i16 = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    i32 = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32))
    f32 = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    return {
        "1": (save(one, "one.png"), {(0, 0): (0, 0, 0), (1, 0): (255, 255, 255)}),
        "L": (save(Image.new("L", (1, 1), 100), "l.png"), {(0, 0): (100,) * 3}),
        # alpha composited over white: 100 * a + 255 * (1 - a), a = 128 / 255
        "LA": (
            save(la, "la.png"),
            {(0, 0): (100,) * 3, (1, 0): (255,) * 3, (2, 0): (177,) * 3},
        ),
        "P": (
            save(_palette_image(False), "p.png"),
            {(0, 0): (255, 0, 0), (1, 0): (0, 0, 255)},
        ),
        "P+transparency": (
            save(_palette_image(True), "pt.png"),
            {(0, 0): (255, 255, 255), (1, 0): (0, 0, 255)},
        ),
        "RGB": (
            save(Image.new("RGB", (1, 1), (10, 20, 30)), "rgb.png"),
            {(0, 0): (10, 20, 30)},
        ),
        "RGBA": (
            save(rgba, "rgba.png"),
            {(0, 0): (255, 0, 0), (1, 0): (255, 255, 255)},
        ),
        "CMYK": (
            save(Image.new("CMYK", (1, 1), (0, 255, 255, 0)), "cmyk.tiff"),
            {(0, 0): (255, 0, 0)},
        ),
        "CMYK-jpeg": (
            save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "cmyk.jpg"),
            {(4, 4): (255, 0, 0)},
        ),
        # 16-bit grey: v / 257 (32896 = 128 * 257); the old reader clipped to 255
        "I;16": (
            save(i16, "i16.png"),
            {(0, 0): (0,) * 3, (1, 0): (128,) * 3, (2, 0): (255,) * 3},
        ),
        "I": (
            save(i32, "i32.tiff"),
            {(0, 0): (0,) * 3, (1, 0): (128,) * 3, (2, 0): (255,) * 3},
        ),
        "F": (
            save(f32, "f32.tiff"),
            {(0, 0): (0,) * 3, (1, 0): (128,) * 3, (2, 0): (255,) * 3},
        ),
        # 48-bit PNG: PIL keeps the high byte of each channel
        "RGB;16": (
            raw(_png_rgb16([[(0x8080, 0xFFFF, 0)]]), "rgb16.png"),
            {(0, 0): (128, 255, 0)},
        ),
    }


@pytest.mark.parametrize("mode", list(_cases()))
def test_read_image_every_mode_known_pixels(tmp_path: Path, mode: str):
    write, expected = _cases()[mode]
    path = write(tmp_path)
    im = read_image(path)
    assert im.mode == "RGB"
    for xy, rgb in expected.items():
        got = im.getpixel(xy)
        assert max(abs(a - b) for a, b in zip(got, rgb)) <= (2 if "jpeg" in mode else 0)


@pytest.mark.parametrize(
    "values,message",
    [
        (np.array([[0, 70000]], dtype=np.int32), "outside the 16-bit range"),
        (np.array([[0.0, 1.5]], dtype=np.float32), "values outside [0, 1]"),
        (np.array([[0.0, np.nan]], dtype=np.float32), "values outside [0, 1]"),
    ],
)
def test_read_image_refuses_unknown_ranges(tmp_path: Path, values, message):
    p = tmp_path / "x.tiff"
    Image.fromarray(values).save(p)
    with pytest.raises(DataError, match=re.escape(message)):
        read_image(p)


def test_read_image_corrupt_and_missing(tmp_path: Path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match="cannot read image .*bad.png"):
        read_image(bad)
    with pytest.raises(DataError, match="cannot read image"):
        read_image(tmp_path / "missing.png")


def test_sixteen_bit_png_gives_the_model_the_same_input_as_8_bit(tmp_path: Path):
    """Through the default model's preprocessing, a 16-bit PNG of v * 257 equals the
    8-bit PNG of v (not an almost-white image)."""
    v = np.arange(64 * 64, dtype=np.int64).reshape(64, 64) % 256
    Image.fromarray((v * 257).astype(np.uint16)).save(tmp_path / "a16.png")
    Image.fromarray(v.astype(np.uint8)).save(tmp_path / "a8.png")
    pre = Preprocessing.for_default()
    x16 = pre(read_image(tmp_path / "a16.png"))
    x8 = pre(read_image(tmp_path / "a8.png"))
    assert torch.equal(x16, x8)
    expected = torch.tensor(v / 255.0 * 2 - 1, dtype=torch.float32)
    assert torch.allclose(x8[0], expected, atol=1e-6)


# ------------------------------------------------------------ preprocessing
def test_default_preprocessing_is_the_zoos():
    images = torch.as_tensor(zoo.make_scenes(2, split="test", seed=3).images)
    pre = Preprocessing.for_default()
    assert torch.equal(torch.stack([pre(x) for x in images]), zoo.preprocess(images))


def test_timm_preprocessing_is_timms_eval_transform():
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("test_vit", pretrained=False)
    pre = Preprocessing.for_timm(model)
    ref = create_transform(**resolve_data_config(model=model))
    img = Image.fromarray(
        (np.random.default_rng(0).random((90, 120, 3)) * 255).astype(np.uint8)
    )
    assert pre.input_size == (160, 160)
    assert torch.equal(pre(img), ref(img))


def test_boxes_follow_the_resize_and_crop():
    """test_vit's eval transform: shorter side to 168 (x 168/64 here), centre crop
    160 (4 px off each side). A box mapped through it equals the box's corners
    mapped by that formula (to within the one pixel that nearest-neighbour rounding
    allows)."""
    model = timm.create_model("test_vit", pretrained=False)
    pre = Preprocessing.for_timm(model)
    box = (10, 20, 40, 50)
    mask = pre.map_mask(boxes_to_mask([box], (64, 64)))
    assert mask.shape == (160, 160)
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    s, off = 168 / 64, 4
    x0, y0, x1, y1 = (c * s - off for c in box)
    assert abs(int(cols[0]) - x0) <= 1 and abs(int(cols[-1]) + 1 - x1) <= 1
    assert abs(int(rows[0]) - y0) <= 1 and abs(int(rows[-1]) + 1 - y1) <= 1
    # a box wholly inside the cropped-away border disappears
    assert not pre.map_mask(boxes_to_mask([(0, 0, 1, 1)], (64, 64))).any()


def test_boxes_to_mask_uses_pixel_centres_like_pointing_game():
    from captum_vit.metrics import pointing_game

    mask = boxes_to_mask([(2, 3, 5, 7), (0, 0, 1, 1)], (8, 8))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[3:7, 2:5] = True
    expected[0, 0] = True
    assert torch.equal(mask, expected)
    for y in range(8):  # pointing with boxes and with the mask agree everywhere
        for x in range(8):
            attr = torch.zeros(1, 8, 8)
            attr[0, y, x] = 1
            by_box = pointing_game(attr, boxes=[[(2, 3, 5, 7), (0, 0, 1, 1)]])
            by_mask = pointing_game(attr, masks=mask[None])
            assert torch.equal(by_box, by_mask)


# ------------------------------------------------------------------ sources
def _write_scenes(root: Path, n: int = 4, classes=("b_cls", "a_cls")) -> list:
    return write_scene_folder(root, n, classes, seed=7, stem="s")


def test_image_folder_labels_boxes_and_class_map(tmp_path: Path):
    rows = _write_scenes(tmp_path / "data")
    boxes = tmp_path / "boxes.csv"
    with boxes.open("w", newline="") as fh:
        csv.writer(fh).writerows([["file", "x0", "y0", "x1", "y1"]] + rows)
    pre = Preprocessing.for_default()
    data = ImageDataset.from_folder(tmp_path / "data", pre, boxes=boxes)
    assert data.keys() == [
        "a_cls/s1.png",
        "a_cls/s3.png",
        "b_cls/s0.png",
        "b_cls/s2.png",
    ]
    assert data.labels() == [0, 0, 1, 1]  # sorted folder order
    item = data[2]
    x0, y0, x1, y1 = rows[0][1:]
    assert item["ok"] and item["has_gt"]
    assert torch.equal(item["gt"], boxes_to_mask([(x0, y0, x1, y1)], (64, 64)))
    cmap = tmp_path / "map.json"
    cmap.write_text(json.dumps({"a_cls": 5, "b_cls": 2}))
    mapped = ImageDataset.from_folder(tmp_path / "data", pre, class_map=cmap)
    assert mapped.labels() == [5, 5, 2, 2]
    with pytest.raises(DataError, match="outside the model's 4 classes: \\[5\\]"):
        mapped.check_labels(4)
    batch = next(iter(make_loader(data, [[0, 3]], workers=1)))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["key"] == [
        "a_cls/s1.png",
        "b_cls/s2.png",
    ]
    assert torch.equal(batch["image"][1], data[3]["image"])


def test_flat_folder_with_labels_csv_and_masks(tmp_path: Path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (i * 50, 0, 0)).save(flat / f"im{i}.jpg")
    masks = tmp_path / "masks"
    masks.mkdir()
    m = np.zeros((64, 64), np.uint8)
    m[8:16, 24:40] = 255
    Image.fromarray(m).save(masks / "im1.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\nim0.jpg,2\nim1.jpg,0\nim2.jpg,1\n")
    data = ImageDataset.from_folder(
        flat, Preprocessing.for_default(), labels=labels, masks=masks
    )
    assert data.labels() == [2, 0, 1]
    assert not data[0]["has_gt"]  # no mask file: left out of pointing
    assert torch.equal(data[1]["gt"], torch.from_numpy(m > 0))


def test_corrupt_image_is_an_item_not_a_crash(tmp_path: Path):
    _write_scenes(tmp_path / "data", n=2)
    (tmp_path / "data" / "a_cls" / "zz_broken.png").write_bytes(b"garbage")
    data = ImageDataset.from_folder(tmp_path / "data", Preprocessing.for_default())
    item = data[data.keys().index("a_cls/zz_broken.png")]
    assert not item["ok"] and "cannot read image" in item["error"]
    assert item["image"].shape == (3, 64, 64)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: None, "no images found"),
        (
            lambda d: (d / "labels.csv").write_text("file,label\nnope.png,1\n"),
            "match no image",
        ),
        (
            lambda d: (d / "labels.csv").write_text("file,label\nx.png,cat\n"),
            "is not a class index",
        ),
        (lambda d: (d / "labels.csv").write_text("file,label\n"), "have no label"),
        (
            lambda d: (d / "boxes.csv").write_text(
                "file,x0,y0,x1,y1\nghost.png,0,0,4,4\n"
            ),
            "--boxes .*ghost.png",
        ),
        (
            lambda d: (d / "boxes.csv").write_text("file,x0,y0,x1,y1\nx.png,5,0,4,4\n"),
            "is empty",
        ),
        (lambda d: (d / "map.json").write_text("[1, 2]"), "expected a JSON object"),
    ],
)
def test_bad_data_one_line_errors(tmp_path: Path, make, message):
    d = tmp_path / "d"
    d.mkdir()
    if "no images" not in message:
        Image.new("RGB", (8, 8)).save(d / "x.png")
    make(tmp_path)
    kw = {}
    if (tmp_path / "labels.csv").exists():
        kw["labels"] = tmp_path / "labels.csv"
    if (tmp_path / "boxes.csv").exists():
        kw["boxes"] = tmp_path / "boxes.csv"
    if (tmp_path / "map.json").exists():
        (d / "cls").mkdir()
        Image.new("RGB", (8, 8)).save(d / "cls" / "y.png")
        kw["class_map"] = tmp_path / "map.json"
    with pytest.raises(DataError, match=message) as info:
        ImageDataset.from_folder(d, Preprocessing.for_default(), **kw)
    assert "\n" not in str(info.value)


def test_subset_is_seeded_and_bounded(tmp_path: Path):
    _write_scenes(tmp_path / "data", n=4)
    data = ImageDataset.from_folder(tmp_path / "data", Preprocessing.for_default())
    a, b = data.subset(2, seed=1), data.subset(2, seed=1)
    assert a.keys() == b.keys() and len(a) == 2 and a.keys() == sorted(a.keys())
    with pytest.raises(DataError, match="--n 5: the data has only 4"):
        data.subset(5, seed=1)


def test_scene_dataset_matches_the_zoo_scenes():
    data = SceneDataset(3, Preprocessing.for_default(), seed=11, default_model=True)
    inputs, scenes = zoo.load_default_scenes(n=3, seed=11)
    for i in range(3):
        item = data[i]
        assert torch.equal(item["image"], inputs[i])
        assert item["label"] == int(scenes.labels[i])
        assert item["distractor"] == int(scenes.distractor_labels[i])
        x0, y0, x1, y1 = scenes.boxes[i, 0].tolist()
        assert torch.equal(item["gt"], boxes_to_mask([(x0, y0, x1, y1)], (64, 64)))


def test_training_transform_extends_the_models_preprocessing(tmp_path: Path):
    """A training augmentation built from the model's preprocessing (same size and
    normalisation) can replace the eval transform of a dataset; boxes cannot follow
    a random transform, so combining them is refused."""
    _write_scenes(tmp_path / "data", n=2)
    pre = Preprocessing.for_timm(timm.create_model("test_vit", pretrained=False))
    train = pre.train_transform(hflip=1.0, color_jitter=None, scale=(1.0, 1.0))
    data = ImageDataset.from_folder(tmp_path / "data", pre, transform=train)
    item = data[0]
    assert item["ok"] and item["image"].shape == (3, 160, 160)
    eval_x = ImageDataset.from_folder(tmp_path / "data", pre)[0]["image"]
    assert not torch.equal(item["image"], eval_x)
    assert "RandomHorizontalFlip" in data.describe()["preprocessing"]
    with pytest.raises(ValueError, match="transform: boxes and masks"):
        ImageDataset(data.entries, pre, boxes={}, transform=train)
