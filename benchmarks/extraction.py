"""Extraction benchmark: units/s of the probe runner against a bare forward and an unsorted loader.

Three runs over the same texts and the same model, interleaved (A B C A B C ...) so that machine
load hits all of them alike; the median of each is reported:

- ``homoscope``: ``homoscope.extract.extract`` (length-sorted batches under a token budget, masked mean
  pooling of every layer, finite checks, storing ``[L+1, n, d]``).
- ``bare``: the same batches (``make_batches``), padded the same way, one
  ``model(..., output_hidden_states=True)`` per batch and nothing else. ``overhead = homoscope / bare - 1``.
- ``unsorted``: batches of the same mean size in corpus order (no length sorting), padded to the
  longest text of each batch, with the same pooling. ``bucketing speed-up = unsorted / homoscope``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from ._common import apply_mem_cap, emit, peak_rss_mb


def run_case(spec: dict) -> dict:
    import torch

    from homoscope.corpora import load_corpus
    from homoscope.extract import extract
    from homoscope.extract.runner import effective_max_length, make_batches, tokenize
    from homoscope.models import load_model

    model_name, sentences = spec["model"], int(spec["sentences"])
    batch_tokens, max_length, repeats = spec.get("batch_tokens", 8192), spec.get("max_length", 128), spec.get("repeats", 3)
    loaded = load_model(model_name, device="cpu")
    corpus = load_corpus("bbc", sentences=sentences)
    texts = list(corpus.texts)
    model, tok = loaded.model, loaded.tokenizer
    ml = effective_max_length(loaded, max_length)
    ids, _special, _ = tokenize(tok, texts, ml)
    lengths = [len(x) for x in ids]
    sorted_batches = make_batches(lengths, batch_tokens)
    bsz = max(1, round(len(texts) / len(sorted_batches)))
    unsorted_batches = [list(range(i, min(i + bsz, len(texts)))) for i in range(0, len(texts), bsz)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def padded(batch):
        t = max(lengths[i] for i in batch)
        inp = torch.full((len(batch), t), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), t), dtype=torch.long)
        for r, i in enumerate(batch):
            inp[r, : lengths[i]] = torch.tensor(ids[i])
            attn[r, : lengths[i]] = 1
        return inp, attn

    pre_sorted = [padded(b) for b in sorted_batches]
    pre_unsorted = [padded(b) for b in unsorted_batches]

    def bare():
        with torch.inference_mode():
            for inp, attn in pre_sorted:
                model(input_ids=inp, attention_mask=attn, output_hidden_states=True, return_dict=True)

    def unsorted():
        outs = []
        with torch.inference_mode():
            for inp, attn in pre_unsorted:
                hs = model(input_ids=inp, attention_mask=attn, output_hidden_states=True, return_dict=True).hidden_states
                w = (attn / attn.sum(1, keepdim=True)).float()[:, None, :]
                outs.append(torch.stack([torch.bmm(w, h.float())[:, 0] for h in hs]))
        return torch.cat(outs, 1)

    def ours():
        return extract(loaded, texts, batch_tokens=batch_tokens, max_length=max_length, progress=False)

    ours()  # warm-up (allocator, kernels)
    times = {"homoscope": [], "bare": [], "unsorted": []}
    for _ in range(repeats):
        for name, fn in (("homoscope", ours), ("bare", bare), ("unsorted", unsorted)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    n = len(texts)
    pad_sorted = sum(len(b) * max(lengths[i] for i in b) for b in sorted_batches)
    pad_unsorted = sum(len(b) * max(lengths[i] for i in b) for b in unsorted_batches)
    return {**spec, "bench": "extraction", "status": "ok", "n": n, "d": loaded.info.width,
            "batches_sorted": len(sorted_batches), "batch_size_unsorted": bsz,
            "real_tokens": sum(lengths), "padded_tokens_sorted": pad_sorted, "padded_tokens_unsorted": pad_unsorted,
            "seconds": med["homoscope"], "bare_s": med["bare"], "unsorted_s": med["unsorted"],
            "units_per_s": n / med["homoscope"], "bare_units_per_s": n / med["bare"],
            "unsorted_units_per_s": n / med["unsorted"],
            "overhead_pct": 100 * (med["homoscope"] / med["bare"] - 1),
            "bucketing_speedup": med["unsorted"] / med["homoscope"],
            "times": {k: [round(x, 3) for x in v] for k, v in times.items()},
            "peak_mb": round(peak_rss_mb()), "threads": torch.get_num_threads()}


def main(argv: list[str]) -> None:
    apply_mem_cap()
    emit(run_case(json.loads(argv[0])))


if __name__ == "__main__":
    main(sys.argv[1:])
