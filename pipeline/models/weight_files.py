"""Which files of a local model folder ``from_pretrained`` reads: what a resume key must hash.

A hub snapshot of Stable Diffusion 1.4 holds every variant of its weights (``*.fp16.safetensors``,
``*.bin`` beside ``*.safetensors``, the original ``sd-v1-4*.ckpt`` files at the top, a safety
checker): tens of GB, of which training reads about 4. ``loaded_files`` lists the files one
``from_pretrained`` call reads for a weights ``variant``:

- every file that is not a weight file (configs, tokenizer vocabularies, scheduler configs,
  ``model_index.json``), always: they are small, and hashing one too many is harmless;
- of the weight files (``WEIGHT_SUFFIXES``) in each folder, only the ones selected the way
  diffusers and transformers select them: ``safetensors`` before ``bin``, the single file
  ``<stem>[.<variant>].<ext>`` before a sharded index ``<stem>.<ext>.index[.<variant>].json``
  (the index and the shards it names), for the stems ``diffusion_pytorch_model``
  (diffusers), ``model`` and ``pytorch_model`` (transformers);
- a folder holding weight files none of which match the rule is hashed whole, weights and all
  (nothing is left out on a guess);
- weight files at the top of a diffusers pipeline folder (beside ``model_index.json``: the
  original ``sd-v1-4.ckpt``, ``sd-v1-4-full-ema.ckpt``) are read by no ``from_pretrained``;
- hidden folders (``.cache/huggingface`` download metadata) are not read by loaders and not listed.

``components`` limits a pipeline folder to the subfolders one loader reads (``load_sd_components``:
tokenizer, scheduler, text_encoder, vae, unet; not the safety checker); top-level files stay.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ot", ".gguf",
                   ".tflite", ".mlmodel", ".pb")
STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
#: the subfolders ``load_sd_components`` reads
SD_TRAIN_COMPONENTS = ("tokenizer", "scheduler", "text_encoder", "vae", "unet")
#: and, in an SDXL folder, its second tokenizer and text encoder
SDXL_TRAIN_COMPONENTS = SD_TRAIN_COMPONENTS + ("tokenizer_2", "text_encoder_2")


def train_components(pretrained: str | Path) -> tuple[str, ...]:
    """The subfolders ``load_sd_components`` reads from a local folder (SDXL's two more when present)."""
    xl = all((Path(pretrained) / c).is_dir() for c in SDXL_TRAIN_COMPONENTS[len(SD_TRAIN_COMPONENTS):])
    return SDXL_TRAIN_COMPONENTS if xl else SD_TRAIN_COMPONENTS


def _is_weight(path: Path) -> bool:
    return path.suffix in WEIGHT_SUFFIXES or path.name.endswith(".index.json") or ".index." in path.name


def selected_weights(folder: Path, variant: str | None = None) -> list[Path] | None:
    """The weight files ``from_pretrained(folder, variant=variant)`` reads, or None if no rule matches.

    A sharded index counts with the shards its ``weight_map`` names.
    """
    v = f".{variant}" if variant else ""
    for ext in ("safetensors", "bin"):
        for stem in STEMS:
            single = folder / f"{stem}{v}.{ext}"
            if single.is_file():
                return [single]
            index = folder / f"{stem}.{ext}.index{v}.json"
            if index.is_file():
                try:
                    shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                except (OSError, ValueError, KeyError, AttributeError) as e:
                    raise ValueError(f"{index}: not a weights index ({type(e).__name__}: {e})") from None
                return [index, *(folder / s for s in shards)]
    return None


def _folder_files(folder: Path, variant: str | None) -> list[Path]:
    """One folder's (not its subfolders') loaded files: the non-weight files and the selected weights."""
    files = sorted(f for f in folder.iterdir() if f.is_file())
    weights = [f for f in files if _is_weight(f)]
    if not weights:
        return files
    if (folder / "model_index.json").is_file():  # a pipeline's top: its loaders read only the subfolders
        return [f for f in files if not _is_weight(f)]
    chosen = selected_weights(folder, variant)
    if chosen is None:
        log.info("%s: no weight file matches the loaders' names (variant %s); hashing all of them", folder, variant)
        return files
    return sorted({f for f in files if not _is_weight(f)} | set(chosen))


def loaded_files(folder: str | Path, variant: str | None = None,
                 components: tuple[str, ...] | None = None) -> list[Path]:
    """The files of local model folder ``folder`` that loading it reads (see the module docstring), sorted.

    components: the subfolders read (None: every non-hidden subfolder, recursively).
    """
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a model folder")
    if components is not None:
        missing = [c for c in components if not (root / c).is_dir()]
        if missing:
            raise FileNotFoundError(f"{root}: no subfolder {missing}")
    out = _folder_files(root, variant)
    subfolders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for sub in subfolders:
        if components is None or sub.name in components:
            out.extend(loaded_files(sub, variant))
    return sorted(out)


def model_inputs(pretrained: str | Path, variant: str | None = None,
                 components: tuple[str, ...] | None = None) -> list[str]:
    """What a resume key lists for a model given as a local folder, a local file or a hub id.

    A folder: its ``loaded_files`` (as paths under ``pretrained``); anything else: ``[pretrained]``
    itself (``inputs_digest`` hashes a file's bytes and keys a hub id by its text).
    """
    path = Path(pretrained)
    if not path.is_dir():
        return [str(pretrained)]
    return [str(f) for f in loaded_files(path, variant, components)]
