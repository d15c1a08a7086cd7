"""The training dataset: joins, counts, image and mask transforms, collation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.transforms import functional as TF

from pipeline.core.images import load_rgb
from pipeline.core.masks import encode_rle, resize_mask
from pipeline.core.schemas import CAPTIONS_SCHEMA, MASKS_SCHEMA, NOUNS_SCHEMA
from pipeline.core.tables import read_table, write_rows
from pipeline.data.tokens import CaptionTokenizer, span_token_indices
from pipeline.models.clip_tokenizer import (
    EOS_ID,
    build_clip_tokenizer,
    load_clip_tokenizer,
)
from pipeline.train.dataset import (
    Example,
    MaskCoverage,
    NounTarget,
    TokenComposeDataset,
    build_examples,
    collate,
    is_long_caption,
)

R = 64
LATENT = [4, 8, 16]
LONG = "a dog" + " and a very red dog" * 20 + "."


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return load_clip_tokenizer(build_clip_tokenizer(tmp_path_factory.mktemp("clip") / "tok", save_fast=False))


def _image(path: Path, width: int, height: int, mode: str = "RGB") -> Path:
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], -1)
    img = Image.fromarray(rgb.astype(np.uint8))
    (img if mode == "RGB" else img.convert(mode)).save(path)
    return path


def _box(height: int, width: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((height, width), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.fixture(scope="module")
def tables(tmp_path_factory, clip) -> dict:
    """Five captions on three images (one missing), nouns with real CLIP token indices, masks in 2 shards."""
    root = tmp_path_factory.mktemp("data")
    img1 = _image(root / "1.png", 96, 64)
    img2 = _image(root / "2.jpg", 50, 80, mode="L")
    captions = [  # caption_id, image_id, path, (width, height), caption, [(noun, occurrence, masked)]
        (1, 1, img1, (96, 64), "a teddy bear next to a red ball", [("teddy bear", 0, True), ("ball", 0, True)]),
        (2, 1, img1, (96, 64), "a photo of a dog on the grass",
         [("photo", 0, False), ("dog", 0, True), ("grass", 0, False)]),
        (3, 2, img2, (50, 80), LONG, [("dog", 0, True), ("dog", 20, True)]),
        (4, 3, root / "missing.jpg", (40, 40), "a cat on a mat", [("cat", 0, True), ("mat", 0, False)]),
        (5, 1, img1, (96, 64), "a photo of the sky", [("sky", 0, False)]),
    ]
    enc = CaptionTokenizer(clip)
    cap_rows, noun_rows, mask_rows = [], [], []
    for cid, iid, path, (w, h), text, nouns in captions:
        cap_rows.append({"image_id": iid, "caption_id": cid, "file": path.name, "path": str(path), "width": w,
                         "height": h, "mode": "RGB", "caption": text, "official_nouns": None})
        encoding = enc.encode(text)
        for j, (noun, occurrence, masked) in enumerate(nouns):
            start = -1
            for _ in range(occurrence + 1):
                start = text.index(noun, start + 1)
            indices, truncated = span_token_indices(encoding, start, start + len(noun))
            nid = cid * 1000 + j
            noun_rows.append({"noun_id": nid, "caption_id": cid, "image_id": iid, "noun_index": j, "text": noun,
                              "lemma": noun, "start": start, "end": start + len(noun),
                              "token_indices": indices, "truncated": truncated})
            if masked:
                mask = _box(h, w, h // 4, h // 2 + j * 3, w // 8 + j * 5, w // 2 + j * 7)
                mask_rows.append({"noun_id": nid, "caption_id": cid, "image_id": iid, "text": noun, "height": h,
                                  "width": w, "rle": encode_rle(mask), "area": int(mask.sum()), "n_boxes": 1})
    write_rows(cap_rows, CAPTIONS_SCHEMA, root / "captions.parquet")
    write_rows(noun_rows, NOUNS_SCHEMA, root / "nouns.parquet")
    write_rows(mask_rows[:3], MASKS_SCHEMA, root / "masks" / "part-00000.parquet")
    write_rows(mask_rows[3:], MASKS_SCHEMA, root / "masks" / "part-00001.parquet")
    return {"root": root, "captions": root / "captions.parquet", "nouns": root / "nouns.parquet",
            "masks": root / "masks", "noun_rows": noun_rows}


@pytest.fixture(scope="module")
def built(tables, clip):
    return build_examples(tables["captions"], tables["nouns"], tables["masks"], tokenizer=clip)


@pytest.fixture(scope="module")
def dataset(built, clip) -> TokenComposeDataset:
    return TokenComposeDataset(built[0], clip, R, LATENT)


def _item(dataset: TokenComposeDataset, caption_id: int) -> dict:
    k = [e.caption_id for e in dataset.examples].index(caption_id)
    return dataset[k]


# --- build_examples ---------------------------------------------------------------------------


def test_counts_add_up(built):
    examples, _, s = built
    assert [e.caption_id for e in examples] == [1, 2, 3, 5]
    assert s["captions"] == 5 == s["examples"] + s["rejected"]
    assert s["rejected_by_reason"] == {"unreadable_image": 1}
    assert s["input_nouns"] == 10 == (s["supervised_nouns"] + s["truncated_nouns"] + s["unmasked_nouns"]
                                      + s["nouns_without_tokens"] + s["full_image_masks"]
                                      + s["nouns_of_rejected_captions"])
    parts = ("supervised_nouns", "truncated_nouns", "unmasked_nouns", "nouns_of_rejected_captions")
    assert tuple(s[k] for k in parts) == (4, 1, 3, 2)
    assert s["long_captions"] == 1 and s["examples_without_masks"] == 1 and s["max_nouns_per_example"] == 2


def test_full_image_mask_is_flagged_with_its_reason_and_counted(tables, clip, tmp_path: Path):
    """A mask over the whole image (as the tiny random SAM gives) is not supervised; the others are."""
    rows = read_table(tables["masks"]).to_pylist()
    full = next(r for r in rows if r["noun_id"] == 2001)  # "dog" of caption 2, image 1 (96 x 64)
    full["rle"] = encode_rle(np.ones((full["height"], full["width"]), dtype=bool))
    # covers the center crop but for a 4-pixel frame: 1.0 of the 4 x 4 map, 0.77 of the 16 x 16 one
    almost = next(r for r in rows if r["noun_id"] == 1000)
    almost["rle"] = encode_rle(_box(64, 96, 4, 60, 20, 76))
    write_rows(rows, MASKS_SCHEMA, tmp_path / "masks.parquet")
    args = (tables["captions"], tables["nouns"], tmp_path / "masks.parquet")

    examples, rejects, s = build_examples(*args, tokenizer=clip, coverage=MaskCoverage(R, tuple(LATENT), 0.9))
    flagged = [r for r in rejects if r[1] == "mask_covers_image"]
    assert sorted(r[0] for r in flagged) == ["1000", "2001"]
    detail = dict((r[0], r[2]) for r in flagged)
    assert "1.000 of the 4 x 4" in detail["2001"] and "1.000 of the 4 x 4" in detail["1000"]
    assert "max_mask_coverage 0.9" in detail["2001"] and "'dog'" in detail["2001"]
    assert s["full_image_masks"] == 2 and s["supervised_nouns"] == 2
    assert s["rejected"] == 1 and s["rejected_by_reason"] == {"unreadable_image": 1}  # captions only
    assert s["input_nouns"] == 10 == sum(s[k] for k in ("supervised_nouns", "truncated_nouns", "unmasked_nouns",
                                                         "nouns_without_tokens", "full_image_masks",
                                                         "nouns_of_rejected_captions"))
    assert s["captions"] == s["examples"] + s["rejected"] == 5  # the captions stay, for L_LDM
    supervised = {n.noun_id for e in examples for n in e.nouns}
    assert 2001 not in supervised and 1000 not in supervised and 1001 in supervised

    # checked at r = 16 only, the framed mask (0.77) is kept
    _, _, loose = build_examples(*args, tokenizer=clip, coverage=MaskCoverage(R, (16,), 0.9))
    assert loose["full_image_masks"] == 1
    # without a coverage check every mask is supervised, the full one included
    _, _, unchecked = build_examples(*args, tokenizer=clip)
    assert unchecked["full_image_masks"] == 0 and unchecked["supervised_nouns"] == 4


def test_missing_image_rejected_with_reason(built, tables):
    _, rejects, _ = built
    assert len(rejects) == 1
    key, reason, detail = rejects[0]
    assert (key, reason) == ("4", "unreadable_image") and "missing.jpg" in detail


def test_size_mismatch_and_corrupt_image_rejected(tables, tmp_path: Path):
    import pyarrow.parquet as pq

    captions = pq.read_table(tables["captions"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    paths = captions.column("path").to_pylist()
    paths[4] = str(bad)
    widths = captions.column("width").to_pylist()
    widths[2] = 51
    captions = captions.set_column(3, "path", pa.array(paths)).set_column(4, "width", pa.array(widths, pa.int32()))
    pq.write_table(captions, tmp_path / "captions.parquet")
    _, rejects, s = build_examples(tmp_path / "captions.parquet", tables["nouns"], tables["masks"])
    assert s["rejected_by_reason"] == {"image_size_mismatch": 1, "unreadable_image": 2}
    assert ("3", "image_size_mismatch") in [r[:2] for r in rejects]
    assert s["supervised_nouns"] == 3 and s["nouns_of_rejected_captions"] == 5
    assert s["long_captions"] is None
    _, _, s = build_examples(tmp_path / "captions.parquet", tables["nouns"], None)
    assert s["supervised_nouns"] == 0 and s["unmasked_nouns"] == 5


def test_mask_size_mismatch_is_an_error(tables, tmp_path: Path):
    from pipeline.core.tables import read_table

    masks = read_table(tables["masks"])
    widths = masks.column("width").to_pylist()
    widths[0] += 1
    heights = masks.column("height").to_pylist()
    rles = [encode_rle(np.zeros((h, w), dtype=bool)) for h, w in zip(heights, widths)]
    masks = masks.set_column(5, "width", pa.array(widths, pa.int32())).set_column(6, "rle", pa.array(rles, pa.binary()))
    import pyarrow.parquet as pq

    pq.write_table(masks, tmp_path / "masks.parquet")
    with pytest.raises(ValueError, match="mask is 64 x 97, its image 64 x 96"):
        build_examples(tables["captions"], tables["nouns"], tmp_path / "masks.parquet")


def test_inconsistent_tables_are_errors(tables, tmp_path: Path):
    rows = [dict(r) for r in tables["noun_rows"]]
    rows[0]["caption_id"] = 99
    write_rows(rows, NOUNS_SCHEMA, tmp_path / "nouns.parquet")
    with pytest.raises(ValueError, match="not in the captions table"):
        build_examples(tables["captions"], tmp_path / "nouns.parquet", tables["masks"])
    rows = [dict(r) for r in tables["noun_rows"]]
    rows[1]["token_indices"] = [76]
    write_rows(rows, NOUNS_SCHEMA, tmp_path / "nouns2.parquet")
    with pytest.raises(ValueError, match="outside"):
        build_examples(tables["captions"], tmp_path / "nouns2.parquet", tables["masks"])


# --- the dataset ------------------------------------------------------------------------------


def test_shapes_and_ranges(dataset):
    for i in range(len(dataset)):
        item = dataset[i]
        n = len(item["noun_ids"])
        assert item["pixel_values"].shape == (3, R, R) and item["pixel_values"].dtype == torch.float32
        assert item["pixel_values"].min() >= -1 and item["pixel_values"].max() <= 1
        assert item["input_ids"].shape == (77,) and item["input_ids"].dtype == torch.long
        assert list(item["masks"]) == LATENT
        for r, m in item["masks"].items():
            assert m.shape == (n, r, r) and m.dtype == torch.float32
            assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert len(item["token_indices"]) == n


def test_image_transform_is_sd_train_transform(dataset, tables):
    official = transforms.Compose([
        transforms.Resize(R, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(R),
        transforms.ToTensor(),
        transforms.Normalize([0.5], [0.5]),
    ])
    for cid, name in ((1, "1.png"), (3, "2.jpg")):
        expected = official(load_rgb(tables["root"] / name))
        assert torch.equal(_item(dataset, cid)["pixel_values"], expected)


def test_mask_semantics_match_official(dataset, built):
    """Full resolution: torchvision Resize+CenterCrop+ToTensor on the mask image; per r: tensor
    resize without antialias (torchvision 0.14's default on tensors) and ``> 0``."""
    attn_transforms = transforms.Compose([
        transforms.Resize(R, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(R),
        transforms.ToTensor(),
    ])
    from pipeline.core.masks import decode_rle

    for ex in built[0]:
        item = _item(dataset, ex.caption_id)
        for k, noun in enumerate(ex.nouns):
            mask = decode_rle(noun.rle, noun.height, noun.width)
            full = attn_transforms(Image.fromarray(mask.astype(np.uint8) * 255))
            for r in LATENT:
                expected = (TF.resize(full, [r, r], antialias=False) > 0).float()[0]
                assert torch.equal(item["masks"][r][k], expected), (ex.caption_id, k, r)
                assert item["masks"][r][k].sum() > 0


def test_mask_known_answer(clip, tmp_path: Path):
    """A 64 x 64 image at R = 64: an 8 x 8 block in the corner, and a 1-pixel column at x = 40.

    Bilinear without antialias samples the pixels around ``(i + 0.5) * 64 / r - 0.5``: x = 40
    falls between the samples at r = 8 (35, 36 | 43, 44) and r = 16 (37, 38 | 41, 42), so the
    line vanishes there, and is caught at r = 4 (39, 40)."""
    path = _image(tmp_path / "sq.png", 64, 64)
    block = _box(64, 64, 0, 8, 0, 8)
    line = _box(64, 64, 0, 64, 40, 41)
    nouns = tuple(NounTarget(noun_id=k, text="x", token_indices=(1,), rle=encode_rle(m), height=64, width=64)
                  for k, m in enumerate((block, line)))
    ex = Example(caption_id=1, image_id=1, image_path=str(path), caption="x", height=64, width=64, nouns=nouns)
    item = TokenComposeDataset([ex], clip, 64, [4, 8, 16, 64])[0]
    m = item["masks"]
    assert torch.equal(m[64][0], torch.from_numpy(block).float())
    assert m[8][0].nonzero().tolist() == [[0, 0]]
    assert m[4][0].nonzero().tolist() == [[0, 0]]
    assert m[16][0].nonzero().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert m[8][1].sum() == 0 and m[16][1].sum() == 0
    assert m[4][1].nonzero()[:, 1].unique().tolist() == [2] and m[4][1].sum() == 4
    assert torch.equal(resize_mask(m[64], 8), m[8])


def test_multi_token_noun(dataset, clip):
    item = _item(dataset, 1)
    assert item["noun_ids"] == [1000, 1001]
    teddy, ball = item["token_indices"]
    assert teddy == [2, 3] and ball == [8]
    ids = item["input_ids"].tolist()
    assert clip.decode([ids[i] for i in teddy]) == "teddy bear"


def test_unmasked_nouns_unsupervised(dataset):
    assert _item(dataset, 2)["noun_ids"] == [2001]
    item = _item(dataset, 5)
    assert item["noun_ids"] == [] and all(m.shape[0] == 0 for m in item["masks"].values())


def test_long_caption_kept_and_truncated(dataset, clip):
    item = _item(dataset, 3)
    assert item["noun_ids"] == [3000]
    ids = item["input_ids"].tolist()
    full = clip(LONG).input_ids
    assert len(full) > 77
    assert ids[:76] == full[:76] and ids[76] == EOS_ID


def test_input_ids_padding(dataset, clip):
    ids = _item(dataset, 5)["input_ids"].tolist()
    expected = clip("a photo of the sky").input_ids
    assert ids[: len(expected)] == expected and set(ids[len(expected):]) == {EOS_ID}


def test_collate_pads(dataset):
    items = [_item(dataset, 1), _item(dataset, 5), _item(dataset, 3)]
    batch = collate(items)
    assert batch["pixel_values"].shape == (3, 3, R, R) and batch["input_ids"].shape == (3, 77)
    assert batch["token_indices"].shape == (3, 2, 2) and batch["token_valid"].shape == (3, 2, 2)
    assert batch["noun_valid"].tolist() == [[True, True], [False, False], [True, False]]
    assert batch["token_valid"][0].tolist() == [[True, True], [True, False]]
    assert batch["token_indices"][0].tolist() == [[2, 3], [8, 0]]
    assert not batch["token_valid"][1].any() and not batch["token_valid"][2, 1].any()
    assert batch["token_indices"][~batch["token_valid"]].eq(0).all()
    assert batch["noun_ids"].tolist() == [[1000, 1001], [-1, -1], [3000, -1]]
    assert batch["caption_ids"].tolist() == [1, 5, 3]
    for r in LATENT:
        assert batch["masks"][r].shape == (3, 2, r, r)
        assert batch["masks"][r][~batch["noun_valid"]].eq(0).all()
        assert torch.equal(batch["masks"][r][0], items[0]["masks"][r])
        assert torch.equal(batch["masks"][r][2, :1], items[2]["masks"][r])


def test_collate_without_nouns_keeps_one_slot(dataset):
    batch = collate([_item(dataset, 5)])
    assert batch["token_indices"].shape == (1, 1, 1) and not batch["noun_valid"].any()
    assert batch["masks"][16].shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_dataloader(dataset):
    batches = list(DataLoader(dataset, batch_size=3, shuffle=False, collate_fn=collate))
    assert [b["caption_ids"].tolist() for b in batches] == [[1, 2, 3], [5]]


def test_deterministic(tables, clip, dataset):
    again = build_examples(tables["captions"], tables["nouns"], tables["masks"], tokenizer=clip)
    other = TokenComposeDataset(again[0], clip, R, LATENT)
    for i in range(len(dataset)):
        a, b = dataset[i], other[i]
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])
        assert all(torch.equal(a["masks"][r], b["masks"][r]) for r in LATENT)


def test_random_crop_moves_image_and_masks_together(clip, tmp_path: Path):
    """Image = its own mask (white inside): after a random crop, bright pixels are the mask."""
    mask = _box(64, 160, 10, 50, 30, 90)
    path = tmp_path / "m.png"
    Image.fromarray(np.repeat(mask[..., None], 3, -1).astype(np.uint8) * 255).save(path)
    noun = NounTarget(noun_id=1, text="x", token_indices=(1,), rle=encode_rle(mask), height=64, width=160)
    ex = Example(caption_id=1, image_id=1, image_path=str(path), caption="x", height=64, width=160, nouns=(noun,))
    ds = TokenComposeDataset([ex], clip, 32, [32, 8], center_crop=False)
    torch.manual_seed(0)
    seen = set()
    for _ in range(6):
        item = ds[0]
        bright = item["pixel_values"][0] > -1
        assert torch.equal(bright.float(), item["masks"][32][0])
        seen.add(int(item["masks"][32][0].sum()))
    assert len(seen) > 1


def test_bad_arguments(built, clip):
    with pytest.raises(ValueError, match="latent_resolutions"):
        TokenComposeDataset(built[0], clip, R, [8, 8])
    with pytest.raises(ValueError, match="latent_resolutions"):
        TokenComposeDataset(built[0], clip, R, [128])
    with pytest.raises(ValueError, match="resolution"):
        TokenComposeDataset(built[0], clip, 0, [4])


# --- start-up cost: what build_examples opens and decodes -----------------------------------------


def test_a_coverage_that_cannot_reject_decodes_no_mask(tables, clip, monkeypatch):
    import pipeline.train.dataset as ds

    def no_decode(*args, **kwargs):
        raise AssertionError("a mask was decoded")

    monkeypatch.setattr(ds, "decode_rle", no_decode)
    args = (tables["captions"], tables["nouns"], tables["masks"])
    examples, rejects, s = build_examples(*args, tokenizer=clip, coverage=MaskCoverage(R, tuple(LATENT), 1.0))
    _, _, unchecked = build_examples(*args, tokenizer=clip)
    assert s["full_image_masks"] == 0 and s["mask_coverage_checked"] is False
    assert s == unchecked and not [r for r in rejects if r[1] == "mask_covers_image"]
    with pytest.raises(AssertionError, match="decoded"):
        build_examples(*args, coverage=MaskCoverage(R, tuple(LATENT), 0.99))


def test_a_second_start_opens_no_image(tables, clip, monkeypatch, tmp_path):
    """Image header sizes come from the digest cache while the files are unchanged."""
    import PIL.Image

    from pipeline.core import digests

    monkeypatch.setattr(digests, "RACY_SECONDS", 0.0)
    cache = digests.DigestCache(tmp_path / "digests.json")
    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda p, *a, **k: opened.append(p) or real_open(p, *a, **k))
    args = (tables["captions"], tables["nouns"], tables["masks"])
    first = build_examples(*args, coverage=MaskCoverage(R, tuple(LATENT), 1.0), cache=cache)
    assert len(opened) == 2  # two readable images, each opened once
    cache.save()

    def refuse(*args, **kwargs):
        raise AssertionError("an image was opened")

    monkeypatch.setattr(PIL.Image, "open", refuse)
    second = build_examples(*args, coverage=MaskCoverage(R, tuple(LATENT), 1.0),
                            cache=digests.DigestCache(tmp_path / "digests.json"))
    assert second[2] == first[2] and second[1] == first[1]  # the missing image is still rejected


@pytest.mark.parametrize("caption", [
    "a dog on a mat", LONG, "x" * 75, "x" * 76, " ".join(["a"] * 75), " ".join(["a"] * 76),
    "a&b " * 20, "café " * 16, "A photo of " + "ééé" * 30, "tab\tseparated " * 10,
])
def test_long_caption_shortcut_agrees_with_the_tokenizer(clip, caption):
    assert is_long_caption(clip, caption) == (len(clip.tokenize(caption)) > 75)
