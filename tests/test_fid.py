"""FID: pair selection, reference image preparation, torchmetrics wiring (tiny CLIP, InceptionV3 offline)."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from pipeline.evaluate.fid import (
    ClipImageFeatures,
    FidMetric,
    FidPair,
    reference_image,
    select_fid_pairs,
)
from pipeline.models.clip_vision_tiny import (
    IMAGE_SIZE,
    PROJECTION_DIM,
    build_tiny_clip_vision,
)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip_vision(tmp_path_factory.mktemp("tiny_clip"), seed=0)


@pytest.fixture(scope="module")
def base_images() -> torch.Tensor:
    """16 smooth synthetic 48 x 48 images, uint8 (16, 3, 48, 48)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48] / 48
    images = []
    for _ in range(16):
        a = rng.uniform(0, 1, (3, 3))
        images.append(np.stack([0.5 + 0.5 * np.sin(2 * np.pi * 3 * (a[c, 0] * xx + a[c, 1] * yy) + 6 * a[c, 2])
                                for c in range(3)]))
    return torch.from_numpy(np.round(np.stack(images) * 255)).to(torch.uint8)


def noisy(images: torch.Tensor, sigma: float) -> torch.Tensor:
    noise = torch.from_numpy(np.random.default_rng(1).standard_normal(tuple(images.shape)))
    return (images.double() + sigma * noise).round().clamp(0, 255).to(torch.uint8)


def fid_of(clip_dir: Path, real: torch.Tensor, fake: torch.Tensor) -> float:
    metric = FidMetric(clip_dir)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return metric.compute()


def numpy_frechet(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), with symmetric eigendecompositions."""
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    w, v = np.linalg.eigh(s1)
    s1_half = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(s1_half @ s2 @ s1_half), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


# --- tiny CLIP vision model ---------------------------------------------------------------

def test_tiny_clip_vision_is_deterministic_small_and_loadable(tmp_path, clip_dir):
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    again = build_tiny_clip_vision(tmp_path / "again", seed=0)
    other = build_tiny_clip_vision(tmp_path / "other", seed=1)
    weights = (clip_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights
    assert sum(p.stat().st_size for p in clip_dir.iterdir()) < 5_000_000
    model = CLIPVisionModelWithProjection.from_pretrained(clip_dir)
    processor = CLIPImageProcessor.from_pretrained(clip_dir)
    assert model.config.image_size == IMAGE_SIZE and model.config.projection_dim == PROJECTION_DIM
    assert processor.crop_size == {"height": IMAGE_SIZE, "width": IMAGE_SIZE}


# --- FidMetric with CLIP features ---------------------------------------------------------

def test_clip_feature_module(clip_dir, base_images):
    features = ClipImageFeatures(clip_dir)
    out = features(base_images)
    assert out.shape == (16, PROJECTION_DIM) and out.dtype == torch.float32
    assert features.num_features == PROJECTION_DIM
    features.train()
    assert not features.training and not features.model.training
    with pytest.raises(ValueError, match="uint8"):
        features(base_images.float())


def test_fid_of_a_set_with_itself_is_zero(clip_dir, base_images):
    self_fid = fid_of(clip_dir, base_images, base_images)
    scale = fid_of(clip_dir, base_images, noisy(base_images, 40))
    assert scale > 0
    assert abs(self_fid) < 1e-3 * scale


def test_fid_grows_with_noise(clip_dir, base_images):
    values = [fid_of(clip_dir, base_images, noisy(base_images, s)) for s in (10, 20, 40, 80, 160)]
    assert all(a < b for a, b in pairwise(values)), values


def test_fid_grows_with_blur(clip_dir, base_images):
    pil = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in base_images]
    values = []
    for radius in (0.5, 1.5, 3.0, 6.0):
        metric = FidMetric(clip_dir)
        metric.update(pil, real=True)
        metric.update([im.filter(ImageFilter.GaussianBlur(radius)) for im in pil], real=False)
        values.append(metric.compute())
    assert all(a < b for a, b in pairwise(values)), values


def test_fid_equals_numpy_frechet_distance_of_the_same_features(clip_dir, base_images):
    fake = noisy(base_images, 60)[:12]
    metric = FidMetric(clip_dir)
    metric.update(base_images[:8], real=True)      # accumulated over several batches
    metric.update(base_images[8:], real=True)
    metric.update(fake, real=False)
    extractor = metric.metric.inception
    f_real = extractor(base_images).double().numpy()
    f_fake = extractor(fake).double().numpy()
    expected = numpy_frechet(f_real, f_fake)
    assert expected > 0
    assert metric.compute() == pytest.approx(expected, rel=1e-5)
    assert (metric.num_real, metric.num_fake, metric.num_features) == (16, 12, PROJECTION_DIM)


def test_pil_and_tensor_updates_agree(clip_dir, base_images):
    fake = noisy(base_images, 30)
    as_pil = FidMetric(clip_dir)
    as_pil.update([Image.fromarray(x.permute(1, 2, 0).numpy()) for x in base_images], real=True)
    as_pil.update([Image.fromarray(x.permute(1, 2, 0).numpy()) for x in fake], real=False)
    assert as_pil.compute() == pytest.approx(fid_of(clip_dir, base_images, fake), rel=1e-9)


def test_fid_needs_two_images_per_side_and_resets(clip_dir, base_images):
    metric = FidMetric(clip_dir)
    metric.update(base_images[:4], real=True)
    metric.update(base_images[:1], real=False)
    with pytest.raises(ValueError, match="at least 2"):
        metric.compute()
    metric.update(base_images[1:3], real=False)
    assert np.isfinite(metric.compute())
    metric.reset()
    assert (metric.num_real, metric.num_fake) == (0, 0)


def test_bad_inputs(clip_dir, tmp_path, base_images):
    with pytest.raises(FileNotFoundError, match="inception"):
        FidMetric(tmp_path / "no_such_model")
    with pytest.raises(ValueError, match="inception_weights"):
        FidMetric(clip_dir, inception_weights=tmp_path / "inception.pth")
    metric = FidMetric(clip_dir)
    with pytest.raises(ValueError, match="share a size"):
        metric.update([Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8))], real=True)
    with pytest.raises(ValueError, match="uint8"):
        metric.update(base_images.float(), real=True)


# --- FidMetric with InceptionV3, offline --------------------------------------------------

@pytest.fixture
def no_inception_download(monkeypatch) -> list[str]:
    """torch-fidelity's weight download records its URL and returns nothing; loading is a no-op."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    urls: list[str] = []

    def fake_download(url, **kwargs):
        urls.append(url)
        return {}

    monkeypatch.setattr(fe, "load_state_dict_from_url", fake_download)
    monkeypatch.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
    return urls


def test_inception_selects_torchmetrics_standard_2048_features(no_inception_download):
    import torch_fidelity.feature_extractor_inceptionv3 as fe
    from torchmetrics.image.fid import NoTrainInceptionV3

    metric = FidMetric("inception")
    assert no_inception_download == [fe.URL_INCEPTION_V3]
    assert isinstance(metric.metric.inception, NoTrainInceptionV3)
    assert metric.metric.inception.features_list == ["2048"]
    assert not metric.metric.used_custom_model and not metric.metric.normalize
    assert metric.metric.reset_real_features
    assert metric.num_features == 2048
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    metric.update(images[:2], real=True)
    metric.update(images[2:], real=False)
    assert np.isfinite(metric.compute())


def test_inception_loads_local_weights_without_download(monkeypatch, tmp_path, no_inception_download):
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    state = FidMetric("inception").metric.inception.state_dict()
    key = "Conv2d_1a_3x3.conv.weight"
    state[key] = torch.full_like(state[key], 0.25)
    torch.save(state, tmp_path / "inception.pth")
    monkeypatch.undo()

    def no_download(url, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_download)
    metric = FidMetric("inception", inception_weights=tmp_path / "inception.pth")
    assert torch.all(metric.metric.inception.state_dict()[key] == 0.25)


# --- pair selection -----------------------------------------------------------------------

def write_coco(root: Path, n_images: int = 6, missing: tuple[int, ...] = ()) -> tuple[Path, Path]:
    """A COCO captions json (image k has k % 3 + 1 captions) and its images; ``missing`` ids get no file."""
    images_dir = root / "val2017"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for k in range(n_images):
        image_id = 100 + 7 * k
        name = f"{image_id:012d}.jpg"
        images.append({"id": image_id, "file_name": name, "width": 8, "height": 6})
        if image_id not in missing:
            Image.new("RGB", (8, 6), (k * 20, 0, 0)).save(images_dir / name)
        for j in range(k % 3 + 1):
            caption = f"image {image_id} caption {j}"
            annotations.append({"id": 1000 + 10 * k + j, "image_id": image_id, "caption": caption})
    annotations.append({"id": 5000, "image_id": 999, "caption": "an unknown image"})
    annotations.append({"id": 5001, "image_id": 100, "caption": "   "})
    path = root / "captions_val2017.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path, images_dir


def test_select_fid_pairs_is_deterministic_one_caption_per_image(tmp_path):
    captions, images_dir = write_coco(tmp_path)
    pairs = select_fid_pairs(captions, images_dir, n=4, seed=3)
    assert pairs == select_fid_pairs(captions, images_dir, n=4, seed=3)
    assert all(isinstance(p, FidPair) for p in pairs)
    assert len({p.image_id for p in pairs}) == 4
    for p in pairs:
        assert p.caption.startswith(f"image {p.image_id} caption ")
        assert (p.caption_id - 1000) // 10 == (p.image_id - 100) // 7
        assert Path(p.path) == images_dir / f"{p.image_id:012d}.jpg"
    assert 5000 not in {p.caption_id for p in pairs} and 5001 not in {p.caption_id for p in pairs}
    everything = select_fid_pairs(captions, images_dir, n=6, seed=3)
    assert everything[:4] == pairs                       # a larger n keeps the smaller selection
    assert sorted(p.image_id for p in everything) == [100 + 7 * k for k in range(6)]
    orders = {tuple(p.image_id for p in select_fid_pairs(captions, images_dir, n=6, seed=s)) for s in range(5)}
    assert len(orders) > 1                               # the seed matters
    chosen = {p.caption_id for s in range(20) for p in select_fid_pairs(captions, images_dir, n=6, seed=s)
              if p.image_id == 100 + 7 * 2}
    assert chosen == {1020, 1021, 1022}                  # captions are drawn, not always the first


def test_select_fid_pairs_several_distinct_captions_per_image(tmp_path):
    captions, images_dir = write_coco(tmp_path, n_images=9)
    images = [p for p in select_fid_pairs(captions, images_dir, n=9, seed=1) if (p.image_id - 100) // 7 % 3 >= 1]
    two = select_fid_pairs(captions, images_dir, n=9, seed=1, per_image=1)
    assert len(two) == 9 and images
    with pytest.raises(ValueError, match="fewer than captions_per_image=2"):   # image 100 has one caption
        select_fid_pairs(captions, images_dir, n=9, seed=1, per_image=2)
    # keep images with >= 2 captions only: every one gets 2 distinct captions, next to each other
    data = json.loads(captions.read_text())
    data["annotations"] = [a for a in data["annotations"] if (a["image_id"] - 100) // 7 % 3 >= 1]
    captions.write_text(json.dumps(data))
    pairs = select_fid_pairs(captions, images_dir, n=6, seed=1, per_image=2)
    assert len(pairs) == 12 and len({p.image_id for p in pairs}) == 6
    for a, b in zip(pairs[::2], pairs[1::2]):
        assert a.image_id == b.image_id and a.path == b.path and a.caption_id != b.caption_id
    assert select_fid_pairs(captions, images_dir, n=3, seed=1, per_image=2) == pairs[:6]
    drawn = {(p.caption_id) for s in range(20) for p in select_fid_pairs(captions, images_dir, n=6, seed=s, per_image=2)
             if p.image_id == 100 + 7 * 2}
    assert drawn == {1020, 1021, 1022}                   # drawn among the three, not always the first two


def test_select_fid_pairs_errors(tmp_path):
    captions, images_dir = write_coco(tmp_path, missing=(100 + 7 * 5,))
    with pytest.raises(ValueError, match="only 6 images"):
        select_fid_pairs(captions, images_dir, n=7, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        select_fid_pairs(captions, images_dir, n=1, seed=0)
    with pytest.raises(FileNotFoundError, match="000000000135.jpg"):
        select_fid_pairs(captions, images_dir, n=6, seed=0)


# --- reference images ---------------------------------------------------------------------

def thirds(width: int, height: int, horizontal: bool) -> Image.Image:
    """Red / green / blue thirds, left to right (``horizontal``) or top to bottom."""
    a = np.zeros((height, width, 3), np.uint8)
    side = width if horizontal else height
    for c in range(3):
        sl = slice(c * side // 3, (c + 1) * side // 3)
        if horizontal:
            a[:, sl, c] = 255
        else:
            a[sl, :, c] = 255
    return Image.fromarray(a)


@pytest.mark.parametrize("horizontal", [True, False])
def test_reference_image_resizes_shorter_side_and_crops_the_centre(tmp_path, horizontal):
    size = (300, 100) if horizontal else (100, 300)
    thirds(*size, horizontal=horizontal).save(tmp_path / "thirds.png")
    out = reference_image(tmp_path / "thirds.png", 32)
    assert out.size == (32, 32) and out.mode == "RGB"
    a = np.asarray(out).astype(int)
    inner = a[:, 3:-3] if horizontal else a[3:-3, :]     # away from the bicubic seams
    assert (inner[..., 1] >= 250).all() and (inner[..., [0, 2]] <= 5).all()   # all green: the middle third


def test_reference_image_upscales_small_and_converts_grayscale(tmp_path):
    Image.new("L", (20, 10), 77).save(tmp_path / "small.png")
    out = reference_image(tmp_path / "small.png", 24)
    assert out.size == (24, 24) and out.mode == "RGB"
    assert np.all(np.asarray(out) == 77)
