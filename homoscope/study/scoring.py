"""Stage: score model pairs with every measure at all layer pairs, into the tidy frame."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

def model_pairs(names: list[str], how: str) -> list[tuple[str, str]]:
    """Ordered model pairs to score: ``all`` (a before b) or ``first-vs-rest``."""
    if how == "first-vs-rest":
        return [(names[0], b) for b in names[1:]]
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def score_pairs(
    stacks: dict[str, torch.Tensor],
    pairs: list[tuple[str, str]],
    measures: list[str],
    *,
    unit: str = "sentence",
    permutations: int = 0,
    bootstrap: int = 0,
    groups=None,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = True,
    controls: dict[str, torch.Tensor] | None = None,
) -> pd.DataFrame:
    """Score every pair with every measure at all layer pairs; return the tidy frame of DESIGN.md.

    Asymmetric measures are scored in both directions. With ``permutations`` > 0 the frame gets
    ``null_mean``, ``null_std`` and ``p_value``; with ``bootstrap`` > 0, ``ci_low`` and ``ci_high``
    (95 %, resampling whole documents when ``groups`` is given); with ``controls`` (random-init
    stacks keyed by the same model names), ``random_init``: the measure between the controls of
    model_a and model_b at the same layers.
    """
    from tqdm.auto import tqdm

    from ..measures import compute, get_measure, with_controls

    jobs: dict[tuple[str, str], list[str]] = {}
    for a, b in pairs:
        for m in measures:
            jobs.setdefault((a, b), []).append(m)
            if not get_measure(m).symmetric:
                jobs.setdefault((b, a), []).append(m)
    frames = []
    for (a, b), names in tqdm(list(jobs.items()), desc="measures", unit="pair", disable=not progress, leave=False):
        X, Y = stacks[a], stacks[b]
        if device is not None:
            X, Y = X.to(device), Y.to(device)
        try:
            if permutations or bootstrap:
                # one call per pair shares Gram matrices, null and bootstrap sums across the measures
                scored = with_controls(names, X, Y, n_permutations=permutations or None,
                                       n_boot=bootstrap or None, groups=groups, seed=seed)
            else:
                scored = {m: compute(m, X, Y) for m in names}
        except ValueError as err:  # name the models: the measure only knows X and Y
            raise ValueError(f"{', '.join(names)} between {a!r} (X) and {b!r} (Y): {err}") from None
        for m in names:
            res = scored[m] if not isinstance(scored[m], torch.Tensor) else None  # None: no controls
            values = (scored[m] if res is None else res.value).double().cpu().numpy()
            la, lb = values.shape
            ia, ib = np.meshgrid(np.arange(la), np.arange(lb), indexing="ij")
            cols = {
                "model_a": a,
                "layer_a": ia.ravel(),
                "model_b": b,
                "layer_b": ib.ravel(),
                "measure": m,
                "value": values.ravel(),
                "n": X.shape[1],
                "d_a": X.shape[2],
                "d_b": Y.shape[2],
                "unit": unit,
            }
            if res is not None and res.null is not None:
                cols["null_mean"] = _np(res.null.mean).ravel()
                cols["null_std"] = _np(res.null.std).ravel()
                cols["p_value"] = _np(res.null.p_value).ravel()
            if controls is not None:
                cx, cy = controls[a], controls[b]
                if device is not None:
                    cx, cy = cx.to(device), cy.to(device)
                cols["random_init"] = compute(m, cx, cy).double().cpu().numpy().ravel()
            if res is not None and res.ci is not None:
                cols["ci_low"] = _np(res.ci.low).ravel()
                cols["ci_high"] = _np(res.ci.high).ravel()
            frames.append(pd.DataFrame(cols))
    frame = pd.concat(frames, ignore_index=True)
    for c in ("layer_a", "layer_b", "n", "d_a", "d_b"):
        frame[c] = frame[c].astype("int64")
    return frame


def _np(t) -> np.ndarray:
    return t.double().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=float)


