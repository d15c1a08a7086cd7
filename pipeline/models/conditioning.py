"""The UNet's text conditioning of a batch, for SD1.x/2.x and SDXL alike.

SD1.x/2.x: the text encoder's last hidden states ``(B, 77, D)``; no added conditioning.
SDXL (diffusers' ``train_text_to_image_sdxl.py``, ``encode_prompt``): both encoders' penultimate
hidden states concatenated ``(B, 77, 768 + 1280)``, and ``added_cond_kwargs`` with the second
encoder's pooled projection ``text_embeds (B, 1280)`` and each image's ``time_ids (B, 6)``
(original size, crop top-left, target size: ``TokenComposeDataset`` computes them).

Batch keys read: ``input_ids (B, 77)``; SDXL also ``input_ids_2 (B, 77)`` (the second tokenizer's:
OpenCLIP pads with ``"!"`` where the first repeats the end token; positions up to the end token
agree, see ``sdxl.bigg_position_mismatches``) and ``time_ids (B, 6)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pipeline.models.sdxl import encode_sdxl_text


@dataclass
class TextConditioner:
    """Text encoder(s) -> ``(encoder_hidden_states, added_cond_kwargs)`` of a batch.

    ``unet(noisy, t, hidden, added_cond_kwargs=added)`` takes the pair as it is (``added`` is None
    for SD1.x/2.x).
    """

    text_encoder: Any
    text_encoder_2: Any = None

    @classmethod
    def of(cls, owner) -> TextConditioner:
        """The conditioner of a pipeline or components object (``text_encoder``, optional ``text_encoder_2``)."""
        return cls(owner.text_encoder, getattr(owner, "text_encoder_2", None))

    @property
    def sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @torch.no_grad()
    def __call__(self, batch: dict, device, dtype: torch.dtype | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """``hidden (B, 77, D)`` and ``added_cond_kwargs`` (None for SD1.x/2.x), cast to ``dtype`` if given.

        A batch with ``text_hidden`` (and SDXL's ``text_pooled``), from ``train.cache_text``, is used as it is.
        """
        if "text_hidden" in batch:
            hidden = batch["text_hidden"].to(device=device, dtype=dtype)
            if not self.sdxl:
                return hidden, None
            return hidden, {"text_embeds": batch["text_pooled"].to(device, hidden.dtype),
                            "time_ids": batch["time_ids"].to(device, hidden.dtype)}
        if not self.sdxl:
            hidden = self.text_encoder(batch["input_ids"].to(device))[0]
            return (hidden if dtype is None else hidden.to(dtype)), None
        for key in ("input_ids_2", "time_ids"):
            if key not in batch:
                raise KeyError(f"an SDXL batch needs {key!r} (TokenComposeDataset with tokenizer_2)")
        hidden, pooled = encode_sdxl_text([self.text_encoder, self.text_encoder_2],
                                          [batch["input_ids"], batch["input_ids_2"]])
        dtype = dtype or hidden.dtype
        added = {"text_embeds": pooled.to(device, dtype), "time_ids": batch["time_ids"].to(device, dtype)}
        return hidden.to(device, dtype), added
