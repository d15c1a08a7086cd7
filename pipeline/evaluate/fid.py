"""FID of generated images against the real COCO images of their captions.

The ``evaluate`` stage generates one image per caption for K captions of each of N COCO 2017
val images and compares them with the N real images (paper profiles: all 5,000 val2017 images,
K = 2, so 10,000 generated images; val2017 has no 10,000 images to pair one to one):

- ``select_fid_pairs`` picks the N images (a seeded permutation of the sorted image ids) and
  K distinct captions for each (a seeded choice per image, so an image keeps its captions
  whatever N);
- ``reference_image`` prepares a real image as text-to-image FID evaluations do: the shorter
  side resized to R (bicubic, antialiased), then a centre R x R crop;
- ``FidMetric`` wraps torchmetrics' ``FrechetInceptionDistance``. ``features="inception"`` is
  the standard FID network (torch-fidelity's InceptionV3, 2048-d pool features; its weights
  are downloaded on first use unless ``inception_weights`` names a local copy). A path to a
  local CLIP vision model folder instead computes FID in CLIP image-embedding space
  (Kynkäänniemi et al., "The Role of ImageNet Classes in Fréchet Inception Distance", 2023).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from pipeline.core.images import load_rgb
from pipeline.data.captions import check_rows, read_coco
from pipeline.train.dataset import crop_box

log = logging.getLogger(__name__)

INCEPTION = "inception"
INCEPTION_FEATURES = 2048


@dataclass(frozen=True)
class FidPair:
    """One FID sample: a caption to generate from and the real image it describes."""

    caption_id: int
    image_id: int
    caption: str
    path: str


def select_fid_pairs(captions_json: str | Path, images_dir: str | Path, n: int, seed: int,
                     per_image: int = 1) -> list[FidPair]:
    """``n`` images of a COCO captions json with ``per_image`` captions each, in a seeded random order.

    Images: the ids of images with at least one valid caption, sorted, permuted with
    ``numpy.random.default_rng(seed)``; the first ``n`` are taken, in permutation order.
    Captions: ``per_image`` distinct ones chosen per image with ``default_rng([seed, image_id])``
    among its captions sorted by id (``per_image = 1``: ``integers(len)``; more: the first
    ``per_image`` of ``permutation(len)``), so a larger ``n`` keeps the pairs of a smaller one
    (same seed) as its prefix. An image's pairs are consecutive.
    Captions the captions stage would reject (unknown image, unsafe path, duplicate id, empty)
    are skipped. Raises ValueError if ``n < 2``, ``n`` exceeds the available images or an
    image has fewer than ``per_image`` captions, and FileNotFoundError if a chosen image's file
    is missing.
    """
    if n < 2:
        raise ValueError(f"FID needs at least 2 images, got n={n}")
    if per_image < 1:
        raise ValueError(f"FID needs at least 1 caption per image, got {per_image}")
    rows = read_coco(captions_json)
    check_rows(rows)
    valid = [r for r in rows if r.reason is None]
    if len(valid) < len(rows):
        log.warning("%s: %d of %d captions skipped (rejected by the captions checks)",
                    captions_json, len(rows) - len(valid), len(rows))
    by_image: dict[int, list] = {}
    for r in sorted(valid, key=lambda r: r.caption_id):
        by_image.setdefault(r.image_id, []).append(r)
    image_ids = sorted(by_image)
    if n > len(image_ids):
        raise ValueError(f"n={n} FID images requested but {captions_json} has only "
                         f"{len(image_ids)} images with a valid caption")
    order = np.random.default_rng(seed).permutation(len(image_ids))[:n]
    pairs = []
    for k in order:
        image_id = image_ids[int(k)]
        captions = by_image[image_id]
        if len(captions) < per_image:
            raise ValueError(f"FID: image {image_id} of {captions_json} has {len(captions)} valid caption(s), "
                             f"fewer than captions_per_image={per_image}")
        rng = np.random.default_rng([seed, image_id])
        picks = [int(rng.integers(len(captions)))] if per_image == 1 else rng.permutation(len(captions))[:per_image]
        path = Path(images_dir, captions[0].file)
        if not path.is_file():
            raise FileNotFoundError(f"FID reference image missing: {path} (image_id {image_id})")
        for k in picks:
            row = captions[int(k)]
            pairs.append(FidPair(caption_id=row.caption_id, image_id=image_id, caption=row.caption,
                                 path=path.as_posix()))
    log.info("FID: %d of %d images selected, %d caption(s) each (seed %d)", n, len(image_ids), per_image, seed)
    return pairs


def reference_image(path: str | Path, resolution: int) -> Image.Image:
    """The real image at ``path`` as an RGB ``resolution`` x ``resolution`` PIL image.

    Shorter side resized to ``resolution`` (bicubic; PIL antialiases when downscaling), the
    longer side to ``int(resolution * long / short)`` (torchvision's rule), then a centre crop.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    img = TF.resize(load_rgb(path), resolution, interpolation=InterpolationMode.BICUBIC, antialias=True)
    top, left = crop_box(img.height, img.width, resolution, center=True)
    return TF.crop(img, top, left, resolution, resolution)


class ClipImageFeatures(nn.Module):
    """CLIP image embeddings as a torchmetrics FID feature extractor; never leaves eval mode.

    Input: uint8 images ``(B, 3, H, W)`` in [0, 255] (torchmetrics' ``normalize=False``
    convention). They are resized to the model's ``(S, S)`` (bilinear, antialiased), scaled to
    [0, 1] and normalised with the image processor's mean / std. Output: ``image_embeds``
    ``(B, D)`` float32 (D = ``projection_dim``; torchmetrics accumulates in float64).
    ``num_features`` = D tells torchmetrics the width without a probe forward.
    """

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        super().__init__()
        self.model = CLIPVisionModelWithProjection.from_pretrained(model_dir).eval().requires_grad_(False)
        processor = CLIPImageProcessor.from_pretrained(model_dir)
        self.image_size = int(self.model.config.image_size)
        self.num_features = int(self.model.config.projection_dim)
        self.register_buffer("mean", torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> ClipImageFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 -> ``(B, D)`` float32 image embeddings."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        x = images.to(self.mean.device, torch.float32) / 255.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return self.model(pixel_values=x).image_embeds.float()


def images_to_uint8(images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
    """PIL images (all the same size) or a uint8 tensor -> uint8 ``(B, 3, H, W)``."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a uint8 tensor (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        return images
    images = list(images)
    if not images:
        raise ValueError("no images given")
    sizes = {img.size for img in images}
    if len(sizes) != 1:
        raise ValueError(f"images in one update must share a size, got {sorted(sizes)}")
    arrays = [np.asarray(img.convert("RGB"), dtype=np.uint8) for img in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class FidMetric:
    """FID between real and generated images, accumulated batch by batch.

    ``features``: ``"inception"`` (torchmetrics ``feature=2048``: torch-fidelity's InceptionV3
    pool features, the standard FID) or a local folder holding a CLIP vision model
    (``CLIPVisionModelWithProjection`` + ``CLIPImageProcessor``; FID of ``image_embeds``).
    ``inception_weights``: optional local copy of torch-fidelity's InceptionV3 weights
    (``weights-inception-2015-12-05-6726825d.pth``); None downloads them on first use.
    """

    def __init__(self, features: str | Path, device: str | torch.device = "cpu",
                 inception_weights: str | Path | None = None) -> None:
        self.features = str(features)
        if self.features == INCEPTION:
            feature: int | nn.Module = INCEPTION_FEATURES
        else:
            model_dir = Path(features)
            if not (model_dir / "config.json").is_file():
                raise FileNotFoundError(f"FID features must be {INCEPTION!r} or a local CLIP vision model "
                                        f"folder with config.json; got {features!r}")
            if inception_weights is not None:
                raise ValueError("inception_weights is only used with features='inception'")
            feature = ClipImageFeatures(model_dir)
        self.metric = FrechetInceptionDistance(
            feature=feature,
            reset_real_features=True,
            normalize=False,
            sync_on_compute=False,  # one process holds every image; no all-gather with the others
            feature_extractor_weights_path=None if inception_weights is None else str(inception_weights),
        ).to(device)
        self.device = torch.device(device)
        log.info("FID features: %s (%d-d) on %s", self.features, self.num_features, self.device)

    @property
    def num_features(self) -> int:
        return int(self.metric.real_features_sum.shape[0])

    @property
    def num_real(self) -> int:
        return int(self.metric.real_features_num_samples)

    @property
    def num_fake(self) -> int:
        return int(self.metric.fake_features_num_samples)

    def update(self, images: Sequence[Image.Image] | torch.Tensor, real: bool) -> None:
        """Add a batch: PIL images of one size or a uint8 tensor ``(B, 3, H, W)``."""
        batch = images_to_uint8(images).to(self.device)
        self.metric.update(batch, real=real)

    def compute(self) -> float:
        """The FID of everything added so far (ValueError with fewer than 2 images on a side)."""
        if self.num_real < 2 or self.num_fake < 2:
            raise ValueError(f"FID needs at least 2 real and 2 generated images, "
                             f"got {self.num_real} real and {self.num_fake} generated")
        value = float(self.metric.compute())
        log.info("FID (%s) of %d generated vs %d real images: %.4f", self.features, self.num_fake,
                 self.num_real, value)
        return value

    def reset(self) -> None:
        """Forget both sides."""
        self.metric.reset()
