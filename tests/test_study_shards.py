"""Shards and streaming scoring: the sharded store and the streamed measures equal the in-memory path."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from homoscope.extract import RepresentationStore
from homoscope.measures import compute
from homoscope.models.tiny import TINY_TEXT, tiny_model
from homoscope.study import Study, run_study, score_pairs
from homoscope.study.scoring import layer_blocks, stream_measures, zip_rows
from homoscope.study.shards import InMemoryStack, ShardedStack, shard_ranges

EXACT = ["linear_cka", "debiased_cka", "cca_rho", "cca_r2", "svcca", "pwcca", "procrustes"]


@pytest.fixture(scope="module")
def models():
    return {"bert": tiny_model("bert", seed=0), "gpt2": tiny_model("gpt2", seed=0)}


def _study(tmp, corpus, **kw) -> Study:
    base = dict(models=["bert", "gpt2"], corpus=str(corpus), sentences=None, out=str(tmp / "out"),
                store=str(tmp / "store"), measures=["linear_cka"], max_length=16, outliers=False)
    return Study(**{**base, **kw})


def _counting(models):
    """Forward calls per model, counted by hooks (the handles are returned to remove them)."""
    runs = {k: 0 for k in models}
    handles = [m.model.register_forward_pre_hook(lambda *_a, k=k: runs.__setitem__(k, runs[k] + 1))
               for k, m in models.items()]
    return runs, handles


def test_shard_ranges_cover_the_corpus_in_order():
    assert shard_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_ranges(4, 4) == [(0, 4)] and shard_ranges(0, 4) == []
    with pytest.raises(ValueError, match="shard_size=0"):
        shard_ranges(10, 0)
    # words and tokens: at most shard_size rows, cut between texts; a long text is a shard of its own
    assert shard_ranges(5, 4, rows=[2, 2, 1, 6, 0]) == [(0, 2), (2, 3), (3, 5)]
    assert shard_ranges(3, 10, rows=[3, 3, 3]) == [(0, 3)]


def test_sharded_extraction_equals_one_shard(tmp_path, corpus_file, models):
    one = run_study(_study(tmp_path / "a", corpus_file, shard_size=1000), progress=False, loaded_models=models,
                    log=None)
    many = run_study(_study(tmp_path / "b", corpus_file, shard_size=4), progress=False, loaded_models=models,
                     log=None)
    assert [m["shards"] for m in many.manifest["models"]] == [5, 5]  # 19 texts in shards of 4
    import json

    on_disk = json.loads((many.out / "manifest.json").read_text())["timings"]
    assert on_disk == many.manifest["timings"] and {"total", "report", "measures"} <= set(on_disk)
    for name in models:
        a, b = one.representations[name], many.representations[name]
        assert a.shape == b.shape == (3, len(TINY_TEXT), 32)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    stored = list((tmp_path / "b" / "store").glob("bert-*.safetensors"))
    assert len(stored) == 5
    pd.testing.assert_frame_equal(one.frame, many.frame, rtol=0, atol=1e-6)


def test_rerun_recomputes_only_the_missing_shard(tmp_path, corpus_file, models):
    logs = []
    first = run_study(_study(tmp_path, corpus_file, shard_size=4), progress=False, loaded_models=models, log=None)
    victim = sorted((tmp_path / "store").glob("gpt2-*.json"))[2]
    victim.unlink()
    runs, handles = _counting(models)
    try:
        again = run_study(_study(tmp_path, corpus_file, shard_size=4), progress=False, loaded_models=models,
                          log=logs.append)
    finally:
        for h in handles:
            h.remove()
    assert runs["bert"] == 0 and runs["gpt2"] >= 1
    assert [(m["shards"], m["shards_reused"]) for m in again.manifest["models"]] == [(5, 5), (5, 4)]
    assert "reused 4 of 5 shards of gpt2" in logs
    pd.testing.assert_frame_equal(first.frame, again.frame, check_exact=True)


def test_store_reads_a_layer_slice_without_the_rest(tmp_path):
    store = RepresentationStore(tmp_path)
    x = torch.randn(5, 7, 3)
    store.put("m", "ab" * 32, x, {})
    assert torch.equal(store.read("m", "ab" * 32, slice(1, 3)), x[1:3])
    stack = ShardedStack(store, "m", ("ab" * 32,), (7,), 5, 3)
    assert torch.equal(stack.load(), x) and torch.equal(stack.rows(np.array([1, 5])), x[:, [1, 5]])
    assert torch.equal(stack.select([0, 6]).load(), x[:, [0, 6]])


def test_zip_rows_recuts_chunks_at_common_boundaries():
    x, y = torch.randn(2, 11, 3), torch.randn(3, 11, 4)
    gx = (x[:, s:e] for s, e in [(0, 4), (4, 5), (5, 11)])
    gy = (y[:, s:e] for s, e in [(0, 7), (7, 11)])
    pairs = list(zip_rows(gx, gy))
    assert [p[0].shape[1] for p in pairs] == [4, 1, 2, 4]
    assert torch.equal(torch.cat([p[0] for p in pairs], 1), x) and torch.equal(torch.cat([p[1] for p in pairs], 1), y)
    with pytest.raises(ValueError, match="different numbers of rows"):
        list(zip_rows(iter([x]), iter([y[:, :5]])))


@pytest.mark.parametrize("memory_mb", [1, 64])
def test_layer_blocks_cover_every_pair_once(memory_mb):
    seen = np.zeros((7, 13), dtype=int)
    for xs, ys in layer_blocks(7, 13, 384, 768, memory_mb):
        seen[xs, ys] += 1
    assert (seen == 1).all()


def _stacks(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(3, n, 8, generator=g) * 3 + 100  # large means: the shifted sums keep the digits
    # related to X, of full column rank
    Y = (X[:2, :, :5] - 100) @ torch.randn(5, 6, generator=g) + torch.randn(2, n, 6, generator=g)
    return X, Y


def test_streamed_measures_equal_in_memory_float64():
    X, Y = _stacks()
    streamed = stream_measures(EXACT, InMemoryStack(X, chunk_rows=37), InMemoryStack(Y, chunk_rows=50), memory_mb=64).values
    for m in EXACT:
        opts = {"precision": "float64"} if m in ("linear_cka", "debiased_cka") else {}
        ref = compute(m, X.double(), Y.double(), **opts)
        assert (streamed[m] - ref).abs().max() <= 1e-10, m


def test_streaming_in_layer_blocks_equals_one_block():
    X, Y = _stacks()
    big = stream_measures(EXACT, InMemoryStack(X), InMemoryStack(Y), memory_mb=64).values
    assert len(layer_blocks(3, 2, 8, 6, 1)) == 1  # 1 MiB holds all 6 pairs of these widths
    # a budget that fits one layer pair of width 512 x 512 -> blocks of one pair
    Xw, Yw = torch.randn(2, 600, 512), torch.randn(2, 600, 512)
    blocks = layer_blocks(2, 2, 512, 512, 2)
    assert len(blocks) == 4
    with pytest.warns(RuntimeWarning, match=r"one layer pair of widths 512 x 512 needs 6 MiB of sums, above half"):
        one = stream_measures(["linear_cka"], InMemoryStack(Xw), InMemoryStack(Yw), memory_mb=2).values
    ref = compute("linear_cka", Xw.double(), Yw.double(), precision="float64")
    assert (one["linear_cka"] - ref).abs().max() <= 1e-10
    assert set(big) == set(EXACT)


def test_score_pairs_streams_above_the_row_cap_and_subsamples_the_rest():
    X, Y = _stacks(n=200)
    stacks = {"a": X, "b": Y}
    names = ["linear_cka", "debiased_cka", "rbf_cka"]
    full = score_pairs(stacks, [("a", "b")], names, progress=False, pairwise_rows=4096)
    capped = score_pairs(stacks, [("a", "b")], names, progress=False, pairwise_rows=64, permutations=20,
                         bootstrap=20, seed=3)
    for m in ("linear_cka", "debiased_cka"):
        f, c = full[full.measure == m], capped[capped.measure == m]
        assert (f.n == 200).all() and (c.n == 200).all()
        assert (c.get("control_n", c.n) == 200).all()  # closed-form null and exact bootstrap: all rows
        assert np.abs(f.value.to_numpy() - c.value.to_numpy()).max() <= 1e-7
        assert c.p_value.between(0, 1).all() and (c.ci_low <= c.ci_high).all()
    rbf = capped[capped.measure == "rbf_cka"]
    assert (rbf.n == 64).all() and (rbf.get("control_n", rbf.n) == 64).all() and rbf.p_value.between(1 / 21, 1).all()
    # the subsample is the same seeded rows: the capped rbf value is the measure on those rows
    from homoscope.extract.words import sample_rows
    from homoscope.study.scoring import SUBSAMPLE_SEED_OFFSET

    rows = sample_rows(200, 64, 3 + SUBSAMPLE_SEED_OFFSET)
    ref = compute("rbf_cka", X[:, rows], Y[:, rows]).double().numpy().ravel()
    np.testing.assert_allclose(rbf.value.to_numpy(), ref, rtol=0, atol=1e-12)


def test_study_above_the_row_cap_equals_the_in_memory_study(tmp_path, corpus_file, models):
    kw = dict(measures=["linear_cka", "debiased_cka", "svcca", "procrustes"], shard_size=5, random_init=False)
    mem = run_study(_study(tmp_path / "m", corpus_file, **kw), progress=False, loaded_models=models, log=None)
    streamed = run_study(_study(tmp_path / "s", corpus_file, pairwise_rows=16, **kw), progress=False,
                         loaded_models=models, log=None)
    assert len(TINY_TEXT) > 16
    diff = np.abs(mem.frame.value.to_numpy() - streamed.frame.value.to_numpy()).max()
    assert diff <= 1e-7
    assert (streamed.frame.n == len(TINY_TEXT)).all()


def test_word_unit_with_shards_equals_one_shard(tmp_path, corpus_file, models):
    kw = dict(unit="word", max_rows=0, measures=["linear_cka", "debiased_cka"])
    one = run_study(_study(tmp_path / "a", corpus_file, shard_size=1000, **kw), progress=False,
                    loaded_models=models, log=None)
    many = run_study(_study(tmp_path / "b", corpus_file, shard_size=3, pairwise_rows=16, **kw), progress=False,
                     loaded_models=models, log=None)
    assert one.frame.n.iloc[0] == many.frame.n.iloc[0] > 16
    np.testing.assert_allclose(one.frame.value, many.frame.value, rtol=0, atol=1e-6)
    pd.testing.assert_frame_equal(one.rows, many.rows)


def test_random_init_controls_are_stored_as_shards(tmp_path, corpus_file, models):
    r = run_study(_study(tmp_path, corpus_file, shard_size=4, random_init=True), progress=False,
                  loaded_models=models, log=None)
    assert len(list((tmp_path / "store").glob("bert_random-init_-*.safetensors"))) == 5
    assert r.frame.random_init.notna().all()
    again = run_study(_study(tmp_path, corpus_file, shard_size=4, random_init=True), progress=False,
                      loaded_models=models, log=None)
    assert all(c["reused"] for c in again.manifest["controls"]["random_init"])
    pd.testing.assert_frame_equal(r.frame, again.frame, check_exact=True)


@pytest.mark.parametrize("cap", [4096, 64])
def test_cka_nulls_are_the_closed_form_at_full_n(cap):
    from homoscope.measures import analytic_null

    X, Y = _stacks(n=200)
    frame = score_pairs({"a": X, "b": Y}, [("a", "b")], ["linear_cka", "debiased_cka", "procrustes"],
                        progress=False, pairwise_rows=cap, permutations=30, seed=0)
    for m in ("linear_cka", "debiased_cka"):
        want = analytic_null(m, X, Y)
        got = frame[frame.measure == m]
        assert (got.n == 200).all() and (got.get("control_n", got.n) == 200).all()  # all rows, even above the cap
        np.testing.assert_allclose(got.null_mean, want.mean.numpy().ravel(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.null_std, want.std.numpy().ravel(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got.p_value, want.p_value.numpy().ravel(), rtol=1e-6, atol=1e-9)
    # debiased CKA: null mean 0 and std sqrt(2 / (n (n - 3))) for any data
    deb = frame[frame.measure == "debiased_cka"]
    np.testing.assert_allclose(deb.null_std, np.sqrt(2 / (200 * 197)), rtol=1e-9)
    # the other measures keep their drawn null, on the subsample above the cap
    pro = frame[frame.measure == "procrustes"]
    assert pro.p_value.between(1 / 31, 1).all()


def test_streamed_cca_on_ill_conditioned_wide_layers_matches_float64():
    # wide enough that CrossMoments would use float32 products; column scales spanning 1e4 (condition 1e8)
    g = torch.Generator().manual_seed(5)
    n, d = 2500, 1100
    scale = torch.logspace(0, -4, d)
    X = torch.randn(1, n, d, generator=g) * scale
    Y = X + 0.5 * torch.randn(1, n, d, generator=g) * scale
    got = stream_measures(["linear_cka", "cca_rho"], InMemoryStack(X), InMemoryStack(Y), memory_mb=64).values
    want = compute("cca_rho", X.double(), Y.double())
    assert (got["cca_rho"] - want).abs().max() <= 1e-7


def test_streamed_bootstrap_is_exact_on_all_rows():
    from homoscope.measures import bootstrap_weights
    from homoscope.study.scoring import bootstrap_units

    X, Y = _stacks(n=400)
    docs = [f"doc{i // 9}" for i in range(400)]  # 45 documents, bundled into 10 units of whole documents
    names = ["linear_cka", "procrustes", "cca_rho"]
    frame = score_pairs({"a": X, "b": Y}, [("a", "b")], names, progress=False, pairwise_rows=64,
                        permutations=20, bootstrap=40, groups=docs, bootstrap_groups=10, seed=1)
    units = bootstrap_units(docs, 400, 10)
    assert int(units.max()) + 1 == 10
    assert all(len(set(units[i : i + 9].tolist())) == 1 for i in range(0, 400, 9))  # a document is never split
    W = bootstrap_weights(10, 40, seed=1)
    for m in names:
        # each replicate is the measure on the rows of the drawn units, repeated by their counts
        if m == "linear_cka":  # as in memory: copies of a row are not compared with each other
            from homoscope.measures.controls import _linear_engine

            reps = _linear_engine(X.double(), Y.double(), torch.float64).bootstrap(["biased"], W[:, units])["biased"]
        else:
            reps = []
            for w in W:
                rows = torch.arange(400).repeat_interleave(w[units].long())
                reps.append(compute(m, X[:, rows].double(), Y[:, rows].double()))
            reps = torch.stack(reps)
        q = torch.quantile(reps, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
        f = frame[frame.measure == m]
        np.testing.assert_allclose(f.ci_low, q[0].numpy().ravel(), rtol=0, atol=1e-7)
        np.testing.assert_allclose(f.ci_high, q[1].numpy().ravel(), rtol=0, atol=1e-7)
        assert (f.n == 400).all()
    # the closed-form null and the exact bootstrap use all rows; drawn nulls the subsample
    assert (frame[frame.measure == "linear_cka"].control_n == 400).all()
    assert (frame[frame.measure != "linear_cka"].control_n == 64).all()
    # the CCA family needs more subsample rows than the two widths for its drawn null: skipped, with a warning
    g = torch.Generator().manual_seed(2)
    A, B = torch.randn(1, 300, 12, generator=g), torch.randn(1, 300, 10, generator=g)
    with pytest.warns(RuntimeWarning, match=r"cca_rho: no permutation null: .*pairwise_rows=16"):
        f = score_pairs({"a": A, "b": B}, [("a", "b")], ["cca_rho", "linear_cka"], progress=False,
                        pairwise_rows=16, permutations=10, bootstrap=10)
    cca = f[f.measure == "cca_rho"]
    assert (cca.n == 300).all() and cca.p_value.isna().all() and cca.value.notna().all()
    assert cca.ci_low.notna().all() and (cca.get("control_n", cca.n) == 300).all()  # the bootstrap still runs, on all rows
    assert f[f.measure == "linear_cka"].p_value.notna().all()


def test_a_layer_pair_above_the_budget_says_so():
    from homoscope.study.scoring import bootstrap_units

    X, Y = torch.randn(1, 40, 200), torch.randn(1, 40, 200)
    units = bootstrap_units(None, 40, 8)
    W = torch.ones(2, 8, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"a vs b: one layer pair of widths 200 x 200 needs 7 MiB of sums "
                                            r"for 8 bootstrap groups, above half of memory_mb=4"):
        got = stream_measures(["linear_cka"], InMemoryStack(X), InMemoryStack(Y), memory_mb=4, boot=(units, W),
                              label="a vs b")
    assert torch.isfinite(got.values["linear_cka"]).all()


def test_bootstrap_units():
    from homoscope.study.scoring import bootstrap_units

    assert bootstrap_units(None, 10, 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]  # runs of rows
    assert bootstrap_units(["x"] * 5, 5, 4).tolist() == [0, 0, 1, 2, 3]  # one document: runs of rows
    # documents numbered by first appearance; interleaved rows keep their document
    assert bootstrap_units(["b", "a", "b", "c"], 4, 8).tolist() == [0, 1, 0, 2]
    # a document larger than a bundle is never split; bundle ids have no gaps
    assert bootstrap_units(["a"] * 6 + ["b", "c", "d", "e"], 10, 3).tolist() == [0] * 6 + [1, 1, 1, 2]
    # small documents first and one large one: still two units, never one (a zero-width interval)
    assert bootstrap_units(["a", "b"] + ["c"] * 98, 100, 2).unique().tolist() == [0, 1]
    units = bootstrap_units([f"d{i // 3}" for i in range(300)], 300, 16)  # 100 documents of 3 rows
    assert units.unique().numel() == 16 and np.bincount(units.numpy()).max() <= 2 * 300 / 16
    # ids are equal as values, not as printed text; a missing id is refused, naming the row
    assert bootstrap_units(torch.tensor([0.1] * 2 + [0.10001] * 2), 4, 4).tolist() == [0, 0, 1, 1]
    assert bootstrap_units([1, 1, "1", 1.0], 4, 4).tolist() == [0, 0, 1, 0]
    for missing in ([None, "a", None], ["a", float("nan"), "b"]):
        with pytest.raises(ValueError, match=r"missing ids \(None or NaN\), first at row [01]"):
            bootstrap_units(missing, 3, 4)
    with pytest.raises(ValueError, match="bootstrap_groups must be an integer >= 2"):
        bootstrap_units(None, 10, 1)
    with pytest.raises(ValueError, match="one id per row"):
        bootstrap_units(["a", "b"], 3, 4)
    assert bootstrap_units(["a"] * 6 + ["b", "c", "d", "e"], 10, 5).tolist() == [0] * 6 + [1, 2, 3, 4]


def test_word_shards_without_planned_rows(tmp_path, corpus_file, models):
    # max_rows samples few words: most one-row shards of texts hold no planned row
    r = run_study(_study(tmp_path, corpus_file, unit="word", max_rows=12, shard_size=1,
                         measures=["linear_cka"]), progress=False, loaded_models=models, log=None)
    assert (r.frame.n == r.manifest["rows"]["n"]).all() and r.manifest["rows"]["planned"] == 12
    assert r.manifest["models"][0]["shards"] >= 10  # one planned row each; texts without one join a shard


def test_a_malformed_shard_record_is_recomputed(tmp_path, corpus_file, models):
    import json

    first = run_study(_study(tmp_path, corpus_file, shard_size=4), progress=False, loaded_models=models, log=None)
    bad = sorted((tmp_path / "store").glob("bert-*.json"))
    rec = json.loads(bad[0].read_text())
    bad[0].write_text(json.dumps({**rec, "extract": None}))
    bad[1].write_text(json.dumps({**rec, "shape": [3, 4, 40]}))
    again = run_study(_study(tmp_path, corpus_file, shard_size=4), progress=False, loaded_models=models, log=None)
    assert again.manifest["models"][0]["shards_reused"] == 3
    pd.testing.assert_frame_equal(first.frame, again.frame, check_exact=True)


def test_a_constant_first_token_layer_names_the_pooling(tmp_path, corpus_file):
    # pooling="cls": layer 0 is the embedding of [CLS] at position 0, the same row for every text
    two = {"bert": tiny_model("bert", seed=0), "bert2": tiny_model("bert", seed=1)}
    study = _study(tmp_path, corpus_file, models=["bert", "bert2"], pooling="cls")
    with pytest.raises(ValueError, match=r"X layer 0 has zero variance .*pooling='cls' a layer can hold the same row "
                                         r"for every text .*use pooling='mean'"):
        run_study(study, progress=False, loaded_models=two, log=None)


def test_store_files_take_the_umask_like_any_new_file(tmp_path):
    """A shared store stays readable by others where the umask allows it: the tensor file too."""
    import os

    from homoscope._paths import file_mode
    from homoscope.extract import RepresentationStore

    old = os.umask(0o022)
    try:
        path = RepresentationStore(tmp_path / "store").put("m", "k", torch.zeros(2, 3, 4), {"n": 3})
        files = sorted((tmp_path / "store").iterdir())
        assert path in files and len(files) >= 2
        for f in files:
            if f.suffix in (".safetensors", ".json"):
                assert f.stat().st_mode & 0o777 == file_mode() == 0o644, f
    finally:
        os.umask(old)


@pytest.mark.parametrize("docs", [1, 2, 9])
@pytest.mark.parametrize("pairwise_rows", [1024, 20])  # in memory, and streamed with a subsample
def test_too_few_documents_bootstrap_rows_with_a_warning(docs, pairwise_rows):
    """Below MIN_BOOTSTRAP_GROUPS documents a document bootstrap is too narrow to trust (one document: zero
    width): rows are resampled, and it is said; the frame is the row bootstrap's."""
    from homoscope.measures import MIN_BOOTSTRAP_GROUPS

    assert MIN_BOOTSTRAP_GROUPS == 10
    g = torch.Generator().manual_seed(5)
    X = torch.randn(2, 60, 5, generator=g, dtype=torch.float64)
    stacks = {"a": X, "b": X + 0.5 * torch.randn(2, 60, 5, generator=g, dtype=torch.float64)}
    kw = dict(measures=["linear_cka"], bootstrap=50, seed=0, progress=False, pairwise_rows=pairwise_rows)
    with pytest.warns(RuntimeWarning, match=f"come from {docs} documents?, fewer than the 10"):
        few = score_pairs(stacks, [("a", "b")], groups=[f"D{i * docs // 60}" for i in range(60)], **kw)
    rows = score_pairs(stacks, [("a", "b")], **kw)
    assert (few.ci_high - few.ci_low > 1e-3).all()
    pd.testing.assert_frame_equal(few, rows)
    with warnings.catch_warnings():  # ten documents are resampled as documents, without a warning
        warnings.simplefilter("error", RuntimeWarning)
        ten = score_pairs(stacks, [("a", "b")], groups=[f"D{i // 6}" for i in range(60)], **kw)
    assert not np.allclose(ten.ci_low, rows.ci_low)


def test_scores_outside_their_own_interval_are_flagged():
    """A biased resampling distribution can leave the estimate outside its percentile interval: a warning
    counts those cells per measure."""
    from homoscope.study.scoring import _flag_outside_interval

    frame = pd.DataFrame({"measure": ["a", "a", "b"], "value": [0.5, 0.9, 0.2], "ci_low": [0.4, 0.6, 0.1],
                          "ci_high": [0.6, 0.8, 0.3]})
    with pytest.warns(RuntimeWarning, match=r"outside their own 95% percentile interval \(a: 1 of 2 layer pairs\)"):
        _flag_outside_interval(frame)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _flag_outside_interval(frame.iloc[[0, 2]])
        _flag_outside_interval(frame.drop(columns=["ci_low", "ci_high"]))


def test_freed_memory_goes_back_where_the_c_library_can(monkeypatch):
    import platform

    from homoscope import _memory

    if platform.libc_ver()[0] == "glibc":  # malloc_trim exists and is called
        assert _memory.return_freed_memory() is True
    calls = []
    monkeypatch.setattr(_memory, "_malloc_trim", lambda: (lambda pad: calls.append(pad)))
    assert _memory.return_freed_memory() is True and calls == [0]
    monkeypatch.setattr(_memory, "_malloc_trim", lambda: None)  # a C library without it: nothing happens
    assert _memory.return_freed_memory() is False


def test_a_safetensors_write_failure_is_an_os_error_and_leaves_no_file(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import homoscope.extract.store as store_module

    def full_disk(*_a, **_k):
        raise SafetensorError("No space left on device (os error 28)")

    store = RepresentationStore(tmp_path / "store")
    monkeypatch.setattr(store_module, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        store.put("m", "k", torch.zeros(2, 3, 4), {"n": 3})
    assert not [p for p in (tmp_path / "store").iterdir() if p.suffix in (".safetensors", ".tmp")]


def test_the_streamed_bootstrap_never_resamples_fewer_than_ten_units():
    """Documents that bundle into fewer than 10 units (one holds most rows) fall back to runs of rows, said
    in a warning; bootstrap_groups below 10 and groups that are not one id per row are refused."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(2, 200, 3, generator=g, dtype=torch.float64)
    stacks = {"a": X, "b": X + torch.randn(2, 200, 3, generator=g, dtype=torch.float64)}
    kw = dict(measures=["linear_cka"], bootstrap=20, seed=0, progress=False, pairwise_rows=16)
    docs = [0] * 150 + [1 + i // 2 for i in range(50)]  # 26 documents, one of 150 rows
    with pytest.warns(RuntimeWarning, match="bundle into 4 groups of rows"):
        bundled = score_pairs(stacks, [("a", "b")], groups=docs, bootstrap_groups=10, **kw)
    rows = score_pairs(stacks, [("a", "b")], bootstrap_groups=10, **kw)
    pd.testing.assert_frame_equal(bundled, rows)
    with pytest.raises(ValueError, match="bootstrap_groups must be an integer >= 10; got bootstrap_groups=2"):
        score_pairs(stacks, [("a", "b")], bootstrap_groups=2, **kw)
    gen = score_pairs(stacks, [("a", "b")], groups=(i % 20 for i in range(200)), bootstrap_groups=10, **kw)
    pd.testing.assert_frame_equal(gen, score_pairs(stacks, [("a", "b")], groups=[i % 20 for i in range(200)],
                                                   bootstrap_groups=10, **kw))
    for bad, what in ((np.arange(200).reshape(200, 1), r"got shape \(200, 1\)"), ("x" * 200, "got str"),
                      (set(range(200)), "got set")):
        with pytest.raises(ValueError, match=what):
            score_pairs(stacks, [("a", "b")], groups=bad, bootstrap_groups=10, **kw)
