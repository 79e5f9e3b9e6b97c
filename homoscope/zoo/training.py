"""Training one zoo model: the recipe, the seeded loop and the held-out loss.

One recipe for all three families: AdamW (Loshchilov & Hutter 2019) with decoupled weight decay on matrices
only, a linear warmup then a cosine decay to a tenth of the peak learning rate, gradients clipped to norm 1.
A seed fixes everything that is drawn: the initial weights (torch's global RNG, seeded inside
``torch.random.fork_rng`` so the caller's RNG state is left as it was), the order of the training windows and
the masked LM's masks (``torch.Generator`` streams of their own, :func:`~homoscope.zoo.data.stream_seed`).
Python's ``random`` and numpy's RNGs are not used. On the CPU the same seed and options give bit-identical
weights (same torch version and thread count); on a GPU, kernels may add in another order from run to run.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .data import IGNORE, SPECIALS, batch_order, mask_tokens, stream_seed
from .families import build_model, family_logits, family_loss


@dataclass(frozen=True)
class Recipe:
    """The training options shared by every model of a zoo.

    Attributes:
        steps: optimizer steps.
        batch_size: windows per step.
        seq_len: tokens per window (and the models' learned positions).
        lr: peak learning rate.
        warmup: share of ``steps`` with a linear warmup from 0.
        final_lr: the learning rate at the last step, as a share of ``lr`` (cosine decay).
        weight_decay: AdamW's decoupled weight decay, on weight matrices (2 or more dimensions) only.
        betas: AdamW's betas.
        clip: the largest gradient norm (gradients are scaled down to it).
    """

    steps: int = 800
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-3
    warmup: float = 0.1
    final_lr: float = 0.1
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    clip: float = 1.0

    def lr_factor(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based) as a share of ``lr``."""
        warm = max(1, round(self.warmup * self.steps))
        if step < warm:
            return (step + 1) / warm
        done = (step - warm) / max(1, self.steps - warm - 1)
        return self.final_lr + (1 - self.final_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


@dataclass
class Trained:
    """A trained model (on the CPU, eval mode), its loss per step (nats per token), the seconds it took and its
    held-out losses (:func:`heldout_losses`; empty without held-out texts)."""

    model: nn.Module
    losses: list[float]
    seconds: float
    heldout: dict = field(default_factory=dict)


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas)


def _batch(family: str, ids: torch.Tensor, vocab_size: int, masks: torch.Generator, device):
    """The model inputs (and for ``bert`` the labels) of a batch of windows, drawn on the CPU, then moved."""
    if family != "bert":
        return ids.to(device), None
    inputs, labels = mask_tokens(ids, mask_id=SPECIALS.index("[MASK]"), n_special=len(SPECIALS),
                                 vocab_size=vocab_size, generator=masks)
    return inputs.to(device), labels.to(device)


def train_model(family: str, config, windows: torch.Tensor, seed: int, recipe: Recipe, *, device: torch.device,
                progress: bool = False, label: str = "") -> Trained:
    """Train a fresh ``family`` model from ``config`` on int64 ``windows`` ``[n, seq_len]`` under ``seed``.

    Returns :class:`Trained` with the model moved to the CPU in eval mode and ``recipe.steps`` losses (mean
    per-token cross-entropy in nats of each step's batch before its update; for ``bert`` over the masked
    tokens). A tqdm bar named ``label`` shows the loss when ``progress``.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        model = build_model(family, config).to(device)
    order = batch_order(len(windows), recipe.steps, recipe.batch_size,
                        torch.Generator().manual_seed(stream_seed(seed, "data")))
    masks = torch.Generator().manual_seed(stream_seed(seed, "mask"))
    opt = _optimizer(model, recipe)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, recipe.lr_factor)
    losses: list[float] = []
    bar = tqdm(total=recipe.steps, desc=label, disable=not progress, leave=False, unit="step")
    for step in range(recipe.steps):
        ids, labels = _batch(family, windows[order[step]], config.vocab_size, masks, device)
        loss = family_loss(family, model, ids, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.update()
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    return Trained(model=model.cpu().eval(), losses=losses, seconds=time.perf_counter() - start)


@torch.no_grad()
def heldout_losses(family: str, model: nn.Module, windows: torch.Tensor, *, batch_size: int) -> dict[str, float]:
    """The mean per-token cross-entropy in nats of ``model`` (on the CPU, eval mode) on int64 ``windows``
    ``[n, seq_len]``: ``{"heldout_loss": ...}``, and for ``bert`` also ``heldout_loss_at_mask``, the loss at the
    chosen units whose input is ``[MASK]`` (80% of them), which only the context can predict. ``bert`` is
    scored on masks drawn from one fixed stream (:func:`~homoscope.zoo.data.stream_seed` of ``heldout``), the
    same for every seed."""
    masks = torch.Generator().manual_seed(stream_seed(0, "heldout"))
    losses, at_mask = [], []
    for start in range(0, len(windows), batch_size):
        ids, labels = _batch(family, windows[start:start + batch_size], model.config.vocab_size, masks, "cpu")
        if family != "bert":
            logits = family_logits(family, model, ids)
            losses.append(nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(),
                                                      reduction="none"))
            continue
        chosen = labels != IGNORE
        logits = family_logits(family, model, ids, chosen)
        losses.append(nn.functional.cross_entropy(logits, labels[chosen], reduction="none"))
        at_mask.append(losses[-1][ids[chosen] == SPECIALS.index("[MASK]")])
    out = {"heldout_loss": float(torch.cat(losses).mean())}
    if at_mask:
        out["heldout_loss_at_mask"] = float(torch.cat(at_mask).mean())
    return out
