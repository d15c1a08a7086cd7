"""Benchmark: cost of the TokenCompose losses in a training step (time and peak memory).

    python -m bench.bench_train [--model small|sd14] [--steps 10] [--rounds 2] [--no-checkpointing] [--device auto]
    python -m bench.bench_train --mode tokencompose --json     # one mode in this process (what run() starts)

The same UNet (same config, same seed), the same random batch and the same optimizer step
(AdamW, gradient clipping at 1) in three modes:

(a) ``plain``: lambda = gamma = 0; diffusers' default attention processors (SDPA); loss = MSE.
(b) ``tokencompose``: lambda, gamma > 0 as this project trains: ``pipeline.train.attention.AttentionCapture``
    puts explicit-attention capture processors on the supervised cross-attention layers only
    (mid + up ``attn2``), every other layer keeps SDPA; ``grounding_losses`` + ``total_loss``;
    backward inside the capture block.
(c) ``official-style``: what the official code did: every attention layer (self- and
    cross-attention, down, mid and up) computes attention explicitly and stores a clone of its
    probabilities with their graph (``AttentionStore.forward`` appended ``attn.clone()``); the
    dict is kept until after backward and the optimizer step; the same losses on the
    supervised cross-attention maps.

An extra, optional mode ``capture-only`` (``--modes plain,capture-only``) installs the capture
processors of (b) but trains on the MSE alone: the cost of explicit attention on the supervised
layers without the losses.

Models: ``--model small`` (the CPU default): SD 1.4's UNet layout (CrossAttnDown x3 + Down; mid
CrossAttn; Up + CrossAttnUp x3; 2 layers per block, attention_head_dim 8, cross_attention_dim
768) with block_out_channels (64, 128, 256, 256) at 256 px (latent 32; supervised groups
4/8/16/32), batch 1. ``--model sd14``: SD 1.4's UNet config (320, 640, 1280, 1280) at 512 px
(latent 64; groups 8/16/32/64), random weights; for a GPU. Gradient checkpointing is on, as in
the official training, unless ``--no-checkpointing``.

The batch: noisy latents, noise target and timesteps; text states ``(B, 77, cross_attention_dim)``;
N = 3 nouns with 1, 2 and 1 tokens and a random rectangle mask each, resized to every
supervised resolution with ``resize_mask``. Every mode runs ``--rounds`` times in a fresh
subprocess, the modes interleaved; each process makes one warm-up step, then ``--steps`` timed
steps; the median seconds per step over all of a mode's timed steps is reported. On a shared
2-core machine, another busy process makes the times meaningless (OpenMP threads stall): the
note gives the load average before the run.

Peak memory (the largest of a mode's rounds): on CUDA, ``torch.cuda.max_memory_allocated``
over the timed steps (``reset_peak_memory_stats`` after the warm-up): weights, gradients, AdamW
state and activations. On the CPU, peak RSS growth: ``ru_maxrss`` after the timed steps minus
``VmRSS`` (``/proc/self/status``) after the UNet, optimizer and batch are built and before the
warm-up step: gradients, AdamW state and activations, not the weights. RSS is coarse: glibc's
heap keeps freed blocks (the gradients, freed by ``zero_grad(set_to_none=True)``, are reused for
the next step's activations), so a difference smaller than the gradients (4 B x params) can be
partly hidden. ``--mmap-threshold 131072`` runs the modes with ``MALLOC_MMAP_THRESHOLD_`` set,
so that large freed tensors leave the RSS at once (a closer peak; steps ~60 % slower).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from einops import rearrange

from pipeline.core.logs import setup_logging

from .common import REPO, row, to_markdown

log = logging.getLogger("bench.train")

MODES = ("plain", "tokencompose", "official-style")
EXTRA_MODES = ("capture-only",)
MODELS = {
    # name: (block_out_channels, image resolution in px)
    "small": ((64, 128, 256, 256), 256),
    "quick": ((32, 32, 64, 64), 64),          # the GPU report's --quick mode (CPU, test suite)
    "sd14": ((320, 640, 1280, 1280), 512),
}
VAE_FACTOR = 8
TEXT_LEN = 77
NOUN_TOKENS = ((2,), (4, 5), (8,))          # N = 3 nouns, 1-2 CLIP token positions each
LAMBDA_TOKEN, GAMMA_PIXEL = 1e-3, 5e-5      # the official scales
SEED = 0


# --------------------------------------------------------------------------- model and batch


def build_unet(model: str):
    """SD 1.4's UNet layout with the ``model``'s widths, random weights from ``SEED``."""
    from diffusers import UNet2DConditionModel

    channels, resolution = MODELS[model]
    torch.manual_seed(SEED)
    return UNet2DConditionModel(
        sample_size=resolution // VAE_FACTOR,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=channels,
        layers_per_block=2,
        attention_head_dim=8,
        cross_attention_dim=768,
        norm_num_groups=32,
    )


def make_batch(unet, model: str, batch_size: int, device: str) -> dict:
    """A fixed random batch: latents, target, timesteps, text states, masks per resolution, tokens."""
    _, resolution = MODELS[model]
    latent = resolution // VAE_FACTOR
    g = torch.Generator().manual_seed(SEED + 1)
    b = batch_size
    dim = unet.config.cross_attention_dim
    batch = {
        "noisy": torch.randn(b, 4, latent, latent, generator=g),
        "target": torch.randn(b, 4, latent, latent, generator=g),
        "timesteps": torch.randint(0, 1000, (b,), generator=g),
        "text": torch.randn(b, TEXT_LEN, dim, generator=g),
    }
    batch.update(noun_targets(unet, resolution, latent, b, g))
    return {k: ({r: m.to(device) for r, m in v.items()} if isinstance(v, dict) else v.to(device))
            for k, v in batch.items()}


def noun_targets(unet, resolution: int, latent: int, batch_size: int, g: torch.Generator) -> dict:
    """The grounding part of a batch (CPU tensors): N = 3 nouns (``NOUN_TOKENS``) per example, each a random
    rectangle mask resized to every supervised resolution (``masks {r: (B, N, r, r)}``), ``token_indices``,
    ``token_valid`` and ``noun_valid``, as ``TokenComposeDataset`` collates them."""
    from pipeline.core.masks import resize_mask
    from pipeline.train.attention import layer_resolutions

    b, n, t = batch_size, len(NOUN_TOKENS), max(len(x) for x in NOUN_TOKENS)
    full = torch.zeros(b, n, resolution, resolution)
    for i in range(b):
        for j in range(n):  # a random rectangle covering 1/16 to 1/2 of each side
            h, w = (int(torch.randint(resolution // 16, resolution // 2, (1,), generator=g)) for _ in range(2))
            y, x = (int(torch.randint(0, resolution - s, (1,), generator=g)) for s in (h, w))
            full[i, j, y : y + h, x : x + w] = 1.0
    sides = sorted(set(layer_resolutions(unet, latent).values()))
    idx = torch.zeros(b, n, t, dtype=torch.long)
    valid = torch.zeros(b, n, t, dtype=torch.bool)
    for j, tokens in enumerate(NOUN_TOKENS):
        idx[:, j, : len(tokens)] = torch.tensor(tokens)
        valid[:, j, : len(tokens)] = True
    return {"masks": {r: resize_mask(full, r) for r in sides}, "token_indices": idx, "token_valid": valid,
            "noun_valid": torch.ones(b, n, dtype=torch.bool)}


# --------------------------------------------------------------------------- official-style capture


class AllMapsStore:
    """Every attention layer's probabilities from one UNet forward, keyed by processor name.

    Only a layer's first call per forward is kept: the recompute of gradient checkpointing
    runs the layers again during backward (the official controller appended those too, after
    its reset; keeping the forward's maps instead gives the same peak, all maps at once).
    """

    def __init__(self) -> None:
        self.maps: dict[str, torch.Tensor] = {}
        self._seen: set[str] = set()

    def start_forward(self) -> None:
        self.maps.clear()
        self._seen.clear()

    def record(self, name: str, probs: torch.Tensor) -> None:
        if name not in self._seen:
            self._seen.add(name)
            self.maps[name] = probs.clone()   # the official AttentionStore stored attn.clone()

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.maps.values())


class StoreAllAttnProcessor:
    """Explicit attention (``attn.get_attention_scores`` + ``bmm``, diffusers' ``AttnProcessor``)
    for self- and cross-attention, storing the ``(B * heads, Q, S)`` probabilities, as the
    official code's replacement of ``Attention.forward`` did for every layer."""

    def __init__(self, name: str, store: AllMapsStore) -> None:
        self.name = name
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        from pipeline.train.attention import explicit_attention

        return explicit_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb,
                                  on_probs=lambda probs: self.store.record(self.name, probs))


def install_store_all(unet) -> tuple[AllMapsStore, list[str]]:
    """Put :class:`StoreAllAttnProcessor` on every attention layer; the store and the
    supervised (mid + up ``attn2``) processor names."""
    from pipeline.train.attention import supervised_layers

    store = AllMapsStore()
    unet.set_attn_processor({name: StoreAllAttnProcessor(name, store) for name in unet.attn_processors})
    return store, supervised_layers(unet, ("mid", "up"))


def official_groups(store: AllMapsStore, supervised: list[str], heads: dict[str, int]) -> dict[int, list]:
    """``{r: [(B, heads, r * r, 77)]}`` from the stored maps of the supervised layers, in run order."""
    out: dict[int, list[torch.Tensor]] = {}
    for name, probs in store.maps.items():
        if name in supervised:
            r = math.isqrt(probs.shape[1])
            out.setdefault(r, []).append(rearrange(probs, "(b h) q s -> b h q s", h=heads[name]))
    return out


# --------------------------------------------------------------------------- one mode, in this process


def _rss_mb() -> float:
    """Current resident set size (VmRSS) in MB; ``ru_maxrss`` where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _maxrss_mb()


def _maxrss_mb() -> float:
    """Peak resident set size of this process in MB (``ru_maxrss``: kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def run_mode(mode: str, model: str = "small", steps: int = 10, checkpointing: bool = True,
             device: str = "auto", batch_size: int = 1, threads: int | None = None) -> dict:
    """Time ``steps`` training steps of one mode after a warm-up step; peak memory; a dict."""
    from pipeline.core.devices import resolve_device
    from pipeline.train.attention import AttentionCapture
    from pipeline.train.step import ldm_loss_per_example
    from pipeline.train.losses import grounding_losses, total_loss

    if mode not in MODES + EXTRA_MODES:
        raise ValueError(f"mode must be one of {MODES + EXTRA_MODES}, got {mode!r}")
    device = resolve_device(device)
    cuda = device.startswith("cuda")
    if threads:
        torch.set_num_threads(threads)
    unet = build_unet(model)
    n_params = sum(p.numel() for p in unet.parameters())
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.to(device).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=5e-6, weight_decay=1e-2)
    batch = make_batch(unet, model, batch_size, device)
    heads = {f"{n}.processor": m.heads for n, m in unet.named_modules() if hasattr(m, "set_processor")}

    capture = AttentionCapture(unet, blocks=("mid", "up")) if mode in ("tokencompose", "capture-only") else None
    if capture is not None:
        capture.__enter__()  # held for the whole run, as the train stage holds it across steps
    store, supervised = install_store_all(unet) if mode == "official-style" else (None, [])
    no_grounding = {"token": {}, "pixel": {}}
    maps = {"n": 0, "mb": 0.0}

    def losses(pred, groups):
        ldm = ldm_loss_per_example(pred, batch["target"])
        if not groups:
            return total_loss(ldm, no_grounding, 0.0, 0.0)[0]
        grounding = grounding_losses(groups, batch["masks"], batch["token_indices"], batch["token_valid"],
                                     batch["noun_valid"])
        return total_loss(ldm, grounding, LAMBDA_TOKEN, GAMMA_PIXEL)[0]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        args = (batch["noisy"], batch["timesteps"], batch["text"])
        if capture is not None:
            with capture.active(True):   # already held; backward inside it, as in training
                pred = unet(*args).sample
                groups = capture.groups() if mode == "tokencompose" else {}
                held = [p for _, p in capture.store.items()]
                maps.update(n=len(held), mb=sum(p.numel() * p.element_size() for p in held) / 2**20)
                losses(pred, groups).backward()
            capture.clear()
        elif store is not None:
            store.start_forward()
            pred = unet(*args).sample
            loss = losses(pred, official_groups(store, supervised, heads))
            maps.update(n=len(store.maps), mb=store.nbytes() / 2**20)
            loss.backward()
        else:
            losses(unet(*args).sample, {}).backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        if store is not None:
            store.start_forward()   # the maps are dropped after backward and the optimizer step

    gc.collect()
    if cuda:
        torch.cuda.synchronize(device)
        static_mb = torch.cuda.memory_allocated(device) / 2**20
    base_rss = _rss_mb()
    step()  # warm-up: allocates gradients and the AdamW state
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    out = {
        "mode": mode, "model": model, "device": device, "checkpointing": checkpointing,
        "batch_size": batch_size, "steps": steps, "params": n_params,
        "step_s": statistics.median(times), "times_s": times,
        "maps": maps["n"], "maps_mb": maps["mb"], "threads": torch.get_num_threads(),
    }
    if cuda:
        out.update(peak_mb=torch.cuda.max_memory_allocated(device) / 2**20, static_mb=static_mb,
                   memory="cuda max_memory_allocated", gpu=torch.cuda.get_device_name(device))
    else:
        out.update(peak_mb=_maxrss_mb() - base_rss, base_rss_mb=base_rss, memory="peak RSS growth")
    return out


# --------------------------------------------------------------------------- all modes, one subprocess each


def _run_subprocess(mode: str, model: str, steps: int, checkpointing: bool, device: str,
                    batch_size: int, threads: int | None, mmap_threshold: int | None) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_train", "--mode", mode, "--json", "--model", model,
           "--steps", str(steps), "--device", device, "--batch-size", str(batch_size)]
    if threads:
        cmd += ["--threads", str(threads)]
    if not checkpointing:
        cmd.append("--no-checkpointing")
    env = dict(os.environ)
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        log.warning("mode %s failed (exit %d): %s", mode, proc.returncode, proc.stderr[-2000:])
        return {"mode": mode, "error": tail[:120]}
    return json.loads(lines[-1])


def _pool(runs: list[dict]) -> dict:
    """One mode's rounds -> one result: the median of all timed steps, the largest peak."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    out = dict(good[0])
    out["times_s"] = [t for r in good for t in r["times_s"]]
    out["step_s"] = statistics.median(out["times_s"])
    out["peak_mb"] = max(r["peak_mb"] for r in good)
    out["rounds"] = len(good)
    return out


def run(model: str | None = None, steps: int = 10, checkpointing: bool = True, device: str = "auto",
        batch_size: int = 1, modes: tuple[str, ...] = MODES, threads: int | None = None,
        mmap_threshold: int | None = None, rounds: int = 2) -> list[dict]:
    """All rows: dicts with group, metric, value, unit, note. ``model`` None: sd14 on CUDA, else small.

    Each mode runs ``rounds`` times in a fresh subprocess, the modes interleaved (plain,
    tokencompose, official-style, plain, ...), so that a slow spell of a shared machine or
    one process's luck falls on every mode alike.
    """
    from pipeline.core.devices import resolve_device

    device = resolve_device(device)
    model = model or ("sd14" if device.startswith("cuda") else "small")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    modes = tuple(dict.fromkeys(modes))
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(rounds):
        for m in modes:
            runs[m].append(_run_subprocess(m, model, steps, checkpointing, device, batch_size, threads,
                                           mmap_threshold))
    results = {m: _pool(rs) for m, rs in runs.items()}
    ok = next((r for r in results.values() if "error" not in r), None)
    if ok is None:
        raise RuntimeError(f"every mode failed: {[r['error'] for r in results.values()]}")
    resolution = MODELS[model][1]
    cuda = device.startswith("cuda")
    group = f"train-{model}"
    setup = (f"{resolution} px, batch {batch_size}, {ok['params'] / 1e6:.1f}M params, "
             f"checkpointing {'on' if checkpointing else 'off'}, "
             + (ok["gpu"] if cuda else f"CPU {ok['threads']} threads, load average {load:.1f} before the run"))
    mem_note = ("cuda max_memory_allocated over the timed steps (weights, grads, AdamW, activations; "
                f"{ok['static_mb']:,.0f} MB allocated before the first step: weights + batch)" if cuda
                else "peak RSS growth: ru_maxrss after the steps - VmRSS before the first step "
                     "(grads, AdamW state, activations; not the weights)"
                     + (f"; MALLOC_MMAP_THRESHOLD_={mmap_threshold}" if mmap_threshold is not None else ""))
    rows: list[dict] = []
    for m, r in results.items():
        if "error" in r:
            rows.append(row(group, f"{m}: step time", float("nan"), "s", f"failed: {r['error']}"))
            rows.append(row(group, f"{m}: peak memory", float("nan"), "MB", f"failed: {r['error']}"))
            continue
        maps = f"{r['maps']} maps stored with grad, {r['maps_mb']:.1f} MB" if r["maps"] else "no maps stored"
        rows.append(row(group, f"{m}: step time", r["step_s"], "s",
                        f"median of {rounds} x {steps} steps, each process after 1 warm-up; {setup}"
                        if m == modes[0] else maps))
        rows.append(row(group, f"{m}: peak memory", r["peak_mb"], "MB", mem_note if m == modes[0] else ""))
    state_mb = 3 * ok["params"] * 4 / 2**20
    rows.append(row(group, "grads + AdamW state in every peak", state_mb, "MB",
                    "3 x params x 4 B (fp32): the part of each peak the losses cannot change"))
    base = results.get("plain")
    if base is not None and "error" not in base:
        for m, r in results.items():
            if m == "plain" or "error" in r:
                continue
            target = "target <= 1.10" if m == "tokencompose" else ""
            rows.append(row(group, f"{m} / plain: step time", r["step_s"] / base["step_s"], "x", target))
            rows.append(row(group, f"{m} / plain: peak memory", r["peak_mb"] / base["peak_mb"], "x", target))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default=None,
                        help="UNet size (default: small on the CPU, sd14 on CUDA)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process, after 1 warm-up step")
    parser.add_argument("--rounds", type=int, default=2, help="subprocesses per mode, interleaved")
    parser.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--mmap-threshold", type=int, default=None, metavar="BYTES",
                        help="CPU: run the modes with MALLOC_MMAP_THRESHOLD_=BYTES (e.g. 131072), so freed "
                             "tensors leave the RSS at once: a closer peak, a slower step")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated, from {', '.join(MODES + EXTRA_MODES)}; plain first for the ratios")
    parser.add_argument("--mode", choices=MODES + EXTRA_MODES, help="run one mode in this process")
    parser.add_argument("--json", action="store_true", help="with --mode: print the result as one JSON line")
    args = parser.parse_args(argv)
    setup_logging("WARNING")
    if min(args.steps, args.batch_size, args.rounds) < 1:
        parser.error("--steps, --batch-size and --rounds must be >= 1")
    from pipeline.core.devices import resolve_device

    device = resolve_device(args.device)
    model = args.model or ("sd14" if device.startswith("cuda") else "small")
    checkpointing = not args.no_checkpointing
    if args.mode:
        result = run_mode(args.mode, model, args.steps, checkpointing, device, args.batch_size, args.threads)
        print(json.dumps(result) if args.json else to_markdown([
            row(f"train-{model}", f"{args.mode}: step time", result["step_s"], "s", ""),
            row(f"train-{model}", f"{args.mode}: peak memory", result["peak_mb"], "MB", result["memory"]),
        ]))
        return
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES + EXTRA_MODES]
    if bad or not modes:
        parser.error(f"unknown mode(s) {bad}; choose from {MODES + EXTRA_MODES}")
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {device}")
    print(to_markdown(run(model, args.steps, checkpointing, device, args.batch_size, modes, args.threads,
                          args.mmap_threshold, args.rounds)))


if __name__ == "__main__":
    main()
