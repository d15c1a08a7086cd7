"""Capture the cross-attention probabilities of a diffusers UNet through attention processors.

Only the supervised cross-attention (``attn2``) layers get :class:`CaptureCrossAttnProcessor`;
every other layer keeps the processor it had (the fast SDPA default, xformers, ...). The
captured probabilities keep their autograd graph, so losses on them train the UNet.

Shapes: ``B`` batch, ``heads`` attention heads, ``Q = r * r`` latent positions of a layer
(``r`` its square resolution), ``S`` text positions (77 for Stable Diffusion: start, words,
end and padding tokens, all of them).

Usage (backward inside the ``with`` block: under gradient checkpointing the backward pass
re-runs the supervised layers, and it must find the capture processors still installed)::

    with AttentionCapture(unet, blocks=("mid", "up")) as capture:
        pred = unet(noisy_latents, timesteps, text_embeddings).sample
        groups = capture.groups()      # {8: [(B, heads, 64, 77)], 16: [...x3], 32: ..., 64: ...}
        loss = ...                     # from pred and groups
        loss.backward()
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import Attention
from diffusers.utils import deprecate
from einops import rearrange

log = logging.getLogger(__name__)

BLOCK_PREFIXES = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}
BLOCK_ORDER = ("down", "mid", "up")


@dataclass(frozen=True)
class CapturedMap:
    """One layer's cross-attention probabilities from one UNet forward.

    ``probs``: ``(B, heads, Q, S)`` post-softmax, ``Q = resolution ** 2``; sums to 1 over ``S``.
    """

    name: str
    resolution: int
    probs: torch.Tensor


def _check_blocks(blocks: Iterable[str]) -> tuple[str, ...]:
    blocks = tuple(blocks)
    if isinstance(blocks, str) or not blocks:
        raise ValueError(f"blocks must be a non-empty subset of {BLOCK_ORDER}, got {blocks!r}")
    unknown = [b for b in blocks if b not in BLOCK_PREFIXES]
    if unknown:
        raise ValueError(f"unknown UNet block(s) {unknown}; choose from {BLOCK_ORDER}")
    return blocks


def _block_of(module_name: str) -> str | None:
    for block, prefix in BLOCK_PREFIXES.items():
        if module_name.startswith(prefix):
            return block
    return None


def supervised_layers(unet: torch.nn.Module, blocks: Iterable[str] = ("mid", "up")) -> list[str]:
    """Processor names of the cross-attention (``attn2``) layers in ``blocks``.

    Names are keys of ``unet.attn_processors``, e.g.
    ``"mid_block.attentions.0.transformer_blocks.0.attn2.processor"``; ordered down, mid, up
    and within a block as the modules are registered (the order the UNet runs them).
    Raises ``ValueError`` for an unknown block name or when the blocks hold no such layer.
    """
    blocks = _check_blocks(blocks)
    processors = unet.attn_processors
    found: dict[str, list[str]] = {b: [] for b in BLOCK_ORDER}
    for module_name, module in unet.named_modules():
        if not isinstance(module, Attention) or module_name.rsplit(".", 1)[-1] != "attn2":
            continue
        if not module.is_cross_attention:
            continue
        block = _block_of(module_name)
        if block is None or block not in blocks:
            continue
        name = f"{module_name}.processor"
        if name not in processors:
            raise RuntimeError(f"{name} is not among unet.attn_processors; unexpected UNet layout")
        found[block].append(name)
    names = [name for block in BLOCK_ORDER for name in found[block]]
    if not names:
        raise ValueError(f"the UNet has no cross-attention (attn2) layers in blocks {blocks}")
    return names


def layer_resolutions(unet: torch.nn.Module, latent_size: int, blocks: Iterable[str] = ("mid", "up")) -> dict[str, int]:
    """The supervised layers of ``blocks`` -> the side of their square attention map.

    The one definition of the supervised resolution groups, read from the UNet's config (no
    forward): ``down_blocks.i`` runs at ``latent_size / 2**i``, the mid block at the deepest
    side ``latent_size / 2**(levels - 1)``, ``up_blocks.i`` at ``deepest * 2**i``. Keys are
    :func:`supervised_layers` names in their order (SD 1.4 at 512 px, latent 64: mid 8, up 16,
    32, 64). ``latent_size``: ``resolution // vae_scale_factor(vae)``.
    """
    n_levels = len(unet.config.block_out_channels)
    if latent_size % (2 ** (n_levels - 1)):
        raise ValueError(f"latent size {latent_size} is not divisible by {2 ** (n_levels - 1)}")
    deepest = latent_size // 2 ** (n_levels - 1)
    sides = {}
    for name in supervised_layers(unet, blocks):
        block, index = name.split(".")[:2]
        if block == "down_blocks":
            sides[name] = latent_size // 2 ** int(index)
        elif block == "up_blocks":
            sides[name] = deepest * 2 ** int(index)
        else:
            sides[name] = deepest
    return sides



class AttentionStore:
    """Cross-attention probabilities of the current UNet forward, one entry per layer.

    :meth:`start_forward` (called by :class:`AttentionCapture` when the UNet's forward begins)
    empties it. Within one forward only the first call of a layer is recorded: under gradient
    checkpointing the layer's block runs again during backward (the recompute) and those
    calls are counted in :attr:`skipped` (in total) and :attr:`skipped_this_forward` and
    dropped, so the stored tensors stay the ones the losses were built from.
    """

    def __init__(self) -> None:
        self._probs: dict[str, torch.Tensor] = {}
        self._seen: set[str] = set()
        self.skipped = 0
        self.skipped_this_forward = 0

    def start_forward(self) -> None:
        self._probs.clear()
        self._seen.clear()
        self.skipped_this_forward = 0

    def record(self, name: str, probs: torch.Tensor) -> None:
        """Keep ``probs`` ``(B, heads, Q, S)`` for layer ``name`` unless it ran already this forward."""
        if name in self._seen:
            self.skipped += 1
            self.skipped_this_forward += 1
            return
        self._seen.add(name)
        self._probs[name] = probs

    def clear(self) -> None:
        """Drop the stored tensors (and their graphs); later recomputes still are not recorded."""
        self._probs.clear()

    def items(self) -> list[tuple[str, torch.Tensor]]:
        """``(name, probs)`` in the order the layers ran."""
        return list(self._probs.items())


class CaptureCrossAttnProcessor:
    """diffusers attention processor: :class:`~diffusers.models.attention_processor.AttnProcessor`
    math, plus recording the post-softmax probabilities into an :class:`AttentionStore`.

    The probabilities come from ``attn.get_attention_scores`` (``(B * heads, Q, S)``, softmax over
    all ``S`` text positions) and are stored as ``(B, heads, Q, S)`` with their autograd graph.
    ``attn.norm_q`` / ``attn.norm_k`` (per-head query/key norms) are applied as
    ``AttnProcessor2_0`` does; SD UNets have none. Cross-attention only: a call without
    ``encoder_hidden_states`` raises ``ValueError``.
    """

    def __init__(self, name: str, store: AttentionStore) -> None:
        self.name = name
        self.store = store

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        """``hidden_states`` ``(B, Q, C)`` or ``(B, C, h, w)``, ``encoder_hidden_states`` ``(B, S, C_text)``
        -> same shape as ``hidden_states``."""
        if len(args) > 0 or kwargs.get("scale", None) is not None:
            deprecate(
                "scale",
                "1.0.0",
                "The `scale` argument is deprecated and will be ignored; pass it through `cross_attention_kwargs`.",
            )
        if encoder_hidden_states is None:
            raise ValueError(
                f"{self.name}: CaptureCrossAttnProcessor records cross-attention only, "
                "but was called without encoder_hidden_states (self-attention)"
            )

        return explicit_attention(
            attn, hidden_states, encoder_hidden_states, attention_mask, temb,
            on_probs=lambda probs: self.store.record(self.name, rearrange(probs, "(b h) q s -> b h q s", h=attn.heads)),
        )


def explicit_attention(
    attn: Attention,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    temb: torch.Tensor | None = None,
    on_probs: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """diffusers' ``AttnProcessor`` computation (plus ``norm_q``/``norm_k`` as in ``AttnProcessor2_0``),
    handing the post-softmax probabilities ``(B * heads, Q, S)`` to ``on_probs``.

    ``hidden_states`` ``(B, Q, C)`` or ``(B, C, h, w)``; ``encoder_hidden_states`` ``(B, S, C_text)``
    or None (self-attention) -> same shape as ``hidden_states``.
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)

    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch_size, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

    batch_size, sequence_length, _ = (
        hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    )
    attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)

    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)

    query = attn.head_to_batch_dim(query)
    key = attn.head_to_batch_dim(key)
    value = attn.head_to_batch_dim(value)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    attention_probs = attn.get_attention_scores(query, key, attention_mask)
    if on_probs is not None:
        on_probs(attention_probs)

    hidden_states = torch.bmm(attention_probs, value)
    hidden_states = attn.batch_to_head_dim(hidden_states)
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)

    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


def _resolution(name: str, probs: torch.Tensor) -> int:
    q = probs.shape[2]
    r = math.isqrt(q)
    if r * r != q:
        raise ValueError(
            f"{name}: {q} query positions are not a square latent (r * r); "
            "cross-attention maps can only be grouped by resolution for square latents"
        )
    return r


class AttentionCapture:
    """Context manager: capture processors on the supervised cross-attention layers of ``unet``.

    On enter it saves ``unet.attn_processors``, installs :class:`CaptureCrossAttnProcessor` on
    :func:`supervised_layers` ``(unet, blocks)`` only (all other layers keep their processor
    objects) and hooks the UNet's forward so that every forward starts with an empty store.
    On exit (also after an exception) it restores the saved processor objects and drops
    the stored maps. ``unet`` must be the bare diffusers model, not a DDP/compile wrapper
    (a wrapper's forward still runs the hooked model inside).

    Run backward before leaving the block when gradient checkpointing is on: the recompute
    during backward calls whatever processors are installed then, and the restored (SDPA)
    ones save different tensors, which torch rejects with a ``CheckpointError``. Leaving
    with an un-backpropagated checkpointed graph logs a warning.

    The same object can be entered again after exit; :meth:`active` enters it conditionally.
    """

    def __init__(self, unet: torch.nn.Module, blocks: Iterable[str] = ("mid", "up")) -> None:
        self.unet = unet
        self.blocks = _check_blocks(blocks)
        self.layers = supervised_layers(unet, self.blocks)
        self.store = AttentionStore()
        self._originals: dict | None = None
        self._hook = None

    @property
    def is_active(self) -> bool:
        return self._originals is not None

    def active(self, enabled: bool = True) -> contextlib.AbstractContextManager:
        """``with capture.active(flag):`` captures when ``flag`` is true; a no-op when it is false
        or when the capture is already active (so a loop can hold it across many steps)."""
        return self if enabled and not self.is_active else contextlib.nullcontext(self)

    def __enter__(self) -> AttentionCapture:
        if self.is_active:
            raise RuntimeError("AttentionCapture is already active; it cannot be entered twice")
        originals = dict(self.unet.attn_processors)
        mapping = dict(originals)
        for name in self.layers:
            mapping[name] = CaptureCrossAttnProcessor(name, self.store)
        try:
            self.unet.set_attn_processor(mapping)
        except BaseException:
            self.unet.set_attn_processor(dict(originals))
            raise
        self._originals = originals
        self._hook = self.unet.register_forward_pre_hook(lambda module, args: self.store.start_forward())
        self.store.start_forward()
        log.debug("capturing %d cross-attention layers in blocks %s", len(self.layers), self.blocks)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and self._backward_pending():
            log.warning(
                "leaving AttentionCapture before backward while gradient checkpointing is on: the "
                "recompute during backward will run the restored processors and fail; call "
                "backward inside the `with` block"
            )
        originals, self._originals = self._originals, None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.store.start_forward()
        if originals is not None:
            self.unet.set_attn_processor(dict(originals))
        return False

    def _backward_pending(self) -> bool:
        """Checkpointed maps with a graph whose backward has not re-run the layers yet."""
        if not (self.unet.training and getattr(self.unet, "is_gradient_checkpointing", False)):
            return False
        items = self.store.items()
        return bool(items) and any(p.requires_grad for _, p in items) and self.store.skipped_this_forward == 0

    def _require_active(self) -> None:
        if not self.is_active:
            raise RuntimeError("AttentionCapture is not active; read maps inside its `with` block")

    @property
    def maps(self) -> list[CapturedMap]:
        """The supervised layers' maps of the last UNet forward, in the order they ran.

        Raises ``ValueError`` when a layer's latent is not square.
        """
        self._require_active()
        return [CapturedMap(name, _resolution(name, probs), probs) for name, probs in self.store.items()]

    def clear(self) -> None:
        """Drop the stored maps (and the graph they hold); allowed inside and outside the block."""
        self.store.clear()

    def groups(self) -> dict[int, list[torch.Tensor]]:
        """``{resolution r: [(B, heads, r * r, S) per layer]}``, keys and lists in run order.

        With the default blocks this is the official grouping (SD1.4 at 512 px: 8 mid,
        16/32/64 up). With ``"down"`` included, down and up layers of the same resolution
        share one group (the official code keys groups by block and resolution).
        """
        out: dict[int, list[torch.Tensor]] = {}
        for m in self.maps:
            out.setdefault(m.resolution, []).append(m.probs)
        return out


def average_maps(groups: dict[int, list[torch.Tensor]], device: torch.device | str | None = None
                 ) -> dict[int, torch.Tensor]:
    """``{r: [(B, heads, r*r, S) per layer]}`` -> ``{r: (B, r*r, S)}`` float32, heads then layers averaged.

    The one place maps are averaged for pictures and metrics (train heatmaps, held-out
    grounding, evaluate's prompt heatmaps). Detached; moved to ``device`` when given (``"cpu"``
    for anything that goes on to NumPy or PIL), else left where the UNet ran.
    """
    out = {}
    for r, layers in groups.items():
        mean = torch.stack([m.detach().float().mean(1) for m in layers]).mean(0)
        out[r] = mean if device is None else mean.to(device)
    return out
