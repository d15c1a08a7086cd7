"""Image decoding shared by every stage.

COCO train2017 holds RGB, grayscale (``L``) and a few CMYK JPEGs; all of them are valid
training images. ``load_rgb`` is the one way the pipeline turns a file into pixels:

- ``RGB`` is returned as is; ``L``, ``1``, ``P``, ``YCbCr``, ``LAB``, ``HSV`` are converted
  by PIL; alpha (``RGBA``, ``LA``, ``PA``, ``P`` with transparency) is dropped (alpha is
  ignored, not composited: COCO has none).
- ``CMYK`` with an embedded ICC profile is colour-managed to sRGB with LittleCMS; without a
  profile PIL's formula applies (R = (255 - C) * (255 - K) / 255, likewise G from M and
  B from Y). Adobe's inverted CMYK JPEGs are handled by PIL's JPEG reader.
- 16-bit and float modes (``I``, ``I;16*``, ``F``) raise ``UnsupportedModeError``: a lossy
  8-bit rescale would be a guess.

EXIF orientation is deliberately not applied: COCO's width/height, boxes and masks are in
the stored pixel grid, so rotating the pixels would misalign every annotation.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageCms, ImageFile

log = logging.getLogger(__name__)

#: ImageNet normalisation (Grounding DINO's transform; SAM's pixel mean/std are these x 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RGB_CONVERTIBLE = {"RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBa", "RGBX", "LA", "La", "PA"}


class UnsupportedModeError(ValueError):
    """The image's PIL mode has no faithful 8-bit RGB conversion."""


@dataclass(frozen=True)
class ImageInfo:
    """What a full decode tells about one file: size in pixels and the original PIL mode."""

    width: int
    height: int
    mode: str


def open_decoded(path: str | Path) -> Image.Image:
    """Open ``path`` and decode every pixel (``img.load()``), so truncated files raise OSError.

    ``Image.verify()`` only checks the container; a JPEG cut in half passes it.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set: truncated images will not be detected")
    img = Image.open(path)
    try:
        img.load()
    except BaseException:
        img.close()
        raise
    return img


def probe(path: str | Path) -> ImageInfo:
    """Fully decode ``path`` and return its size and mode; raises on unreadable or corrupt files."""
    with open_decoded(path) as img:
        return ImageInfo(width=img.width, height=img.height, mode=img.mode)


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(img, src, dst, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as e:
            log.warning("CMYK image with an unusable ICC profile (%s); using PIL's conversion", e)
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert an opened image to ``RGB`` following the rules in the module docstring."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode not in RGB_CONVERTIBLE:
        raise UnsupportedModeError(f"image mode {mode!r} has no faithful RGB conversion")
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode ``path`` fully and return an ``RGB`` image of the same size (see module docstring)."""
    with open_decoded(path) as img:
        rgb = to_rgb(img)
        if rgb is img:
            rgb = img.copy()
    return rgb
