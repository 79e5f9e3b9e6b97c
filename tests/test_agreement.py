"""Prediction agreement: kappas against references, homogenization against the paper's worked cases,
probes and splits, the independence null, and native heads on tiny models (the real-model check is
in ``test_agreement_real.py``)."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import cohen_kappa_score

from homoscope.agreement import (
    AGREEMENT_COLUMNS,
    SET_COLUMNS,
    agreement_table,
    category_counts,
    cohen_kappa,
    fit_probes,
    fleiss_kappa,
    homogenization,
    homogenization_null,
    homogenization_terms,
    jsd,
    native_head_agreement,
    run_agreement,
    split_by_document,
    tokenizer_groups,
    wilson_interval,
)
from homoscope.corpora import Corpus
from homoscope.models.tiny import TINY_TEXT, tiny_model

# Fleiss (1971) as worked on Wikipedia's "Fleiss' kappa" page: 10 subjects, 14 raters, 5 categories.
FLEISS_TABLE = np.array([
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
])


# ----------------------------------------------------------------------------- kappas and jsd
def test_cohen_kappa_equals_sklearn():
    rng = np.random.default_rng(0)
    for n, c in ((20, 2), (200, 5), (57, 7)):
        a = rng.integers(0, c, n)
        b = np.where(rng.random(n) < 0.6, a, rng.integers(0, c, n))
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    words = np.array(["sport", "tech", "politics"])
    a, b = words[rng.integers(0, 3, 40)], words[rng.integers(0, 3, 40)]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    assert cohen_kappa(a, a) == pytest.approx(1.0)


def test_cohen_kappa_rejects_bad_input():
    with pytest.raises(ValueError, match="same rows"):
        cohen_kappa([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="undefined"):
        cohen_kappa([1, 1, 1], [1, 1, 1])


def test_fleiss_kappa_textbook_example():
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.20993, abs=5e-5)
    assert round(fleiss_kappa(FLEISS_TABLE), 3) == 0.210


def test_fleiss_kappa_from_ratings_and_errors():
    ratings = np.array([[0, 1, 2, 2], [0, 1, 2, 2], [0, 1, 2, 2]])
    counts = category_counts(ratings)
    assert counts.tolist() == [[3, 0, 0], [0, 3, 0], [0, 0, 3], [0, 0, 3]]
    assert fleiss_kappa(counts) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same raters"):
        fleiss_kappa([[2, 0], [1, 0]])
    with pytest.raises(ValueError, match="at least 2 raters"):
        fleiss_kappa([[1, 0], [0, 1]])
    with pytest.raises(ValueError, match="undefined"):
        fleiss_kappa([[3, 0], [3, 0]])


def test_jsd_is_scipy_jensenshannon_squared():
    rng = np.random.default_rng(1)
    p, q = rng.dirichlet(np.ones(6), size=8), rng.dirichlet(np.ones(6), size=8)
    expected = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q)])
    np.testing.assert_allclose(jsd(p, q), expected, atol=1e-12)
    assert jsd([1, 0], [0, 1]) == pytest.approx(1.0)
    assert jsd(p, p) == pytest.approx(np.zeros(8), abs=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        jsd([-0.1, 1.1], [0.5, 0.5])


def test_wilson_interval_reference_values():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    # the closed form of Wilson (1927), z = Phi^-1(0.975): the library's interval is the same number
    z = 1.959963984540054
    for k, n in [(0, 1), (1, 1), (3, 7), (8, 10), (50, 97), (999, 1000)]:
        p, denom = k / n, 1 + z * z / n
        centre, half = (p + z * z / (2 * n)) / denom, z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
        np.testing.assert_allclose(wilson_interval(k, n), (max(0, centre - half), min(1, centre + half)), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="n=0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="successes=11"):
        wilson_interval(11, 10)


# ----------------------------------------------------------------------------- homogenization
def _errors(n, idx):
    f = np.zeros(n, dtype=bool)
    f[list(idx)] = True
    return f


def test_homogenization_identical_and_disjoint_error_sets():
    same = np.stack([_errors(100, range(10)), _errors(100, range(10))])
    h = homogenization(same)
    assert h["h_avg"] == pytest.approx(10.0) and h["h_unif"] == pytest.approx(10.0)
    assert h["h_worst"] == pytest.approx(100.0)
    disjoint = np.stack([_errors(100, range(10)), _errors(100, range(10, 20))])
    assert homogenization(disjoint) == pytest.approx({"h_avg": 0.0, "h_unif": 0.0, "h_worst": 0.0})


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("e", [0.1, 0.25, 0.5])
def test_homogenization_of_k_identical_systems(k, e):
    n = 200
    F = np.tile(_errors(n, range(int(e * n))), (k, 1))
    h = homogenization(F)
    assert h["h_unif"] == pytest.approx(e ** (1 - k))
    assert h["h_avg"] == pytest.approx(e ** (1 - k))


def test_homogenization_of_independent_errors_is_near_one():
    rng = np.random.default_rng(0)
    n = 20000
    F = rng.random((3, n)) < np.array([[0.2], [0.3], [0.25]])
    labels = rng.integers(0, 4, n)
    h = homogenization(F)
    assert h["h_avg"] == pytest.approx(1.0, abs=0.1) and h["h_unif"] == pytest.approx(1.0, abs=0.1)
    hl = homogenization(F, groups=labels)
    for m in ("h_avg", "h_unif", "h_worst"):
        assert hl[m] == pytest.approx(1.0, abs=0.1), m


def _paper_loop(F, groups):
    """The paper's definitions written out with loops over groups and systems."""
    k, n = F.shape
    gs = sorted(set(groups))
    freq = {g: sum(1 for x in groups if x == g) / n for g in gs}
    fail = [F[i].mean() for i in range(k)]
    fail_g = {(i, g): F[i][[x == g for x in groups]].mean() for i in range(k) for g in gs}
    num_avg = sum(math.prod(freq[g] * fail_g[(i, g)] for i in range(k)) for g in gs)
    den_avg = math.prod(fail) * sum(math.prod(freq[g] for _ in range(k)) for g in gs)
    joint = [math.prod(fail_g[(i, g)] for i in range(k)) for g in gs]
    return {"h_avg": num_avg / den_avg, "h_unif": np.mean(joint) / math.prod(fail),
            "h_worst": max(joint) / math.prod(fail)}


def test_homogenization_matches_the_definitions_written_as_loops():
    rng = np.random.default_rng(3)
    for k, n, G in ((2, 60, 3), (3, 90, 5), (4, 50, 50)):
        F = rng.random((k, n)) < 0.4
        F[:, 0] = True  # no system without failures
        groups = [f"g{x}" for x in rng.integers(0, G, n)]
        got = homogenization(F, groups=groups)
        want = _paper_loop(F, groups)
        for m in want:
            assert got[m] == pytest.approx(want[m], rel=1e-12), m
    inst = homogenization(F)
    assert inst == pytest.approx(_paper_loop(F, list(range(F.shape[1]))))


def test_homogenization_null_is_centred_on_one():
    rng = np.random.default_rng(5)
    F = rng.random((3, 150)) < 0.3
    labels = rng.integers(0, 3, 150)
    for groups in (None, labels):
        null = homogenization_null(F, groups, permutations=400, seed=0)
        assert null["h_unif"].mean() == pytest.approx(1.0, abs=0.08)
        assert null["h_avg"].mean() == pytest.approx(1.0, abs=0.08)
        assert null["h_worst"].shape == (400,)
    t = homogenization_terms(F)
    assert t["independent"] == pytest.approx(np.prod(F.mean(axis=1)))


def test_homogenization_rejects_bad_input():
    with pytest.raises(ValueError, match="fails no individual"):
        homogenization(np.stack([_errors(10, [1]), np.zeros(10, bool)]))
    with pytest.raises(ValueError, match="0/1"):
        homogenization([[0, 2, 1]])
    with pytest.raises(ValueError, match="one group per individual"):
        homogenization([[1, 0, 1]], groups=[0, 1])


# ----------------------------------------------------------------------------- agreement table
def test_model_compared_with_itself():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 120)
    pred = np.where(rng.random(120) < 0.7, y, rng.integers(0, 4, 120))
    proba = rng.dirichlet(np.ones(4), size=120)
    f = agreement_table({"m": pred, "m-again": pred.copy()}, y, {"m": proba, "m-again": proba})
    v = dict(zip(f.measure + f.model_a, f.value))
    assert v["agreementm"] == 1.0 and v["cohen_kappam"] == pytest.approx(1.0)
    assert v["error_overlapm"] == 1.0 and v["error_overlap_conditionalm"] == 1.0
    assert v["jsdm"] == pytest.approx(0.0, abs=1e-12)
    assert list(f.columns) == ["model_a", "layer_a", "model_b", "layer_b", "measure", "value",
                               "expected_independent", "n"]


def test_agreement_table_values_and_directions():
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    a = np.array([0, 1, 1, 1, 2, 0, 0, 2])  # wrong at 1, 5, 7
    b = np.array([0, 1, 1, 0, 2, 0, 1, 1])  # wrong at 1, 3, 5, 6
    f = agreement_table({("A", 3): a, ("B", 5): b}, y)
    get = lambda m, ma="A": f[(f.measure == m) & (f.model_a == ma)].iloc[0]  # noqa: E731
    assert get("agreement").value == pytest.approx(np.mean(a == b))
    assert get("cohen_kappa").value == pytest.approx(cohen_kappa_score(a, b))
    assert get("error_overlap").value == pytest.approx(2 / 5)
    assert get("error_overlap_conditional").value == pytest.approx(2 / 3)  # P(B wrong | A wrong)
    rev = get("error_overlap_conditional", "B")
    assert rev.value == pytest.approx(2 / 4) and (rev.layer_a, rev.model_b, rev.layer_b) == (5, "A", 3)
    assert "jsd" not in set(f.measure)


def test_expected_independent_is_calibrated():
    """Models that predict independently given the label agree, on average, as expected_independent says."""
    rng = np.random.default_rng(2)
    n, C = 200, 4
    conf_a = 0.6 * np.eye(C) + 0.4 * rng.dirichlet(np.ones(C), size=C)
    conf_b = 0.4 * np.eye(C) + 0.6 * rng.dirichlet(np.ones(C), size=C)
    gaps = {}
    for _ in range(80):
        y = rng.integers(0, C, n)
        cum_a, cum_b = conf_a[y].cumsum(1), conf_b[y].cumsum(1)
        a = (rng.random((n, 1)) > cum_a).sum(1).clip(max=C - 1)
        b = (rng.random((n, 1)) > cum_b).sum(1).clip(max=C - 1)
        pa = rng.dirichlet(np.ones(C), size=n) * 0.5 + 0.5 * np.eye(C)[y]
        pb = rng.dirichlet(np.ones(C), size=n) * 0.5 + 0.5 * np.eye(C)[y]
        f = agreement_table({"a": a, "b": b}, y, {"a": pa, "b": pb})
        for m, gap in zip(f.measure + f.model_a, f.value - f.expected_independent):
            gaps.setdefault(m, []).append(gap)
    for m, g in gaps.items():
        assert abs(np.mean(g)) < 3 * np.std(g) / np.sqrt(len(g)) + 1e-3, m


def test_agreement_over_too_few_documents_resamples_rows_with_a_warning():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 150)
    a = np.where(rng.random(150) < 0.7, y, rng.integers(0, 3, 150))
    b = np.where(rng.random(150) < 0.7, a, rng.integers(0, 3, 150))
    with pytest.warns(RuntimeWarning, match="agreement's test rows: the rows come from 3 documents, fewer than the 10"):
        few = agreement_table({"a": a, "b": b}, y, bootstrap=100, groups=np.repeat(np.arange(3), 50), seed=0)
    rows = agreement_table({"a": a, "b": b}, y, bootstrap=100, seed=0)
    pd.testing.assert_frame_equal(few, rows)
    assert (few.ci_high - few.ci_low > 0).all()


def test_bootstrap_intervals_bracket_the_value():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 150)
    a = np.where(rng.random(150) < 0.7, y, rng.integers(0, 3, 150))
    b = np.where(rng.random(150) < 0.7, a, rng.integers(0, 3, 150))
    docs = np.repeat(np.arange(50), 3)
    f = agreement_table({"a": a, "b": b}, y, bootstrap=200, groups=docs, seed=0)
    assert ((f.ci_low <= f.value + 1e-12) & (f.value <= f.ci_high + 1e-12)).all()
    assert (f.ci_high - f.ci_low > 0).all()
    # the same documents as every other interval of the study: measures.bootstrap_weights with the same seed
    from homoscope.measures import bootstrap_weights

    W = bootstrap_weights(150, 200, docs, seed=0).numpy()
    agree = ((a == b) * W).sum(1) / W.sum(1)
    row = f[f.measure == "agreement"].iloc[0]
    assert (row.ci_low, row.ci_high) == pytest.approx((np.percentile(agree, 2.5), np.percentile(agree, 97.5)), abs=1e-12)


# ----------------------------------------------------------------------------- split and probes
def test_split_by_document_keeps_documents_whole():
    rng = np.random.default_rng(0)
    docs = [f"doc{d}" for d in rng.integers(0, 120, 600)]
    labels = [f"L{int(d[3:]) % 5}" for d in docs]
    for seed in (0, 1, 2):
        train, test = split_by_document(docs, 0.3, seed, labels=labels)
        assert not {docs[i] for i in train} & {docs[i] for i in test}
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(600))
        assert 0.25 < test.size / 600 < 0.4
        assert {labels[i] for i in test} == {labels[i] for i in train} == {f"L{j}" for j in range(5)}
    again = split_by_document(docs, 0.3, 0, labels=labels)
    assert all(np.array_equal(x, y) for x, y in zip(again, split_by_document(docs, 0.3, 0, labels=labels)))
    t0, _ = split_by_document(docs, 0.3, 0)
    t1, _ = split_by_document(docs, 0.3, 1)
    assert not np.array_equal(t0, t1)


def test_split_by_document_errors():
    with pytest.raises(ValueError, match="at least two"):
        split_by_document(["a", "a", "a"])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_by_document(["a", "b"], test_size=1.0)
    with pytest.raises(ValueError, match="one label per row"):
        split_by_document(["a", "b"], labels=["x"])


def _synthetic(n=400, C=4, informative=2, layers=4, d=24, docs=None, seed=0, noise_seed=None, strength=1.5):
    """Stack [layers, n, d] with class signal only in layer ``informative``; two rows per document."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    means = rng.normal(size=(C, d)) * strength
    nrng = np.random.default_rng(seed if noise_seed is None else noise_seed)
    S = nrng.normal(size=(layers, n, d)).astype(np.float32)
    S[informative] += means[y]
    doc = np.arange(n) // 2 if docs is None else docs
    return torch.from_numpy(S), y, doc


def test_probes_find_the_informative_layer():
    S, y, docs = _synthetic()
    train, test = split_by_document(docs, 0.3, 0, labels=y)
    res = fit_probes({"m": S}, y, train, test, seed=0, groups=docs)
    f = res.frame.set_index("layer")
    assert res.best_layers == {"m": 2}
    assert f.loc[2, "value"] > 0.9 and f.loc[0, "value"] < 0.5
    assert ((f.ci_low <= f.value) & (f.value <= f.ci_high)).all()
    assert f["n"].eq(test.size).all() and f["n_train"].eq(train.size).all()
    P = res.proba[("m", 2)]
    assert P.shape == (test.size, 4) and np.allclose(P.sum(1), 1.0)
    assert np.array_equal(res.predictions[("m", 2)], P.argmax(1))
    again = fit_probes({"m": S}, y, train, test, seed=0, groups=docs)
    assert np.array_equal(again.proba[("m", 2)], P)
    only = fit_probes({"m": S}, y, train, test, layers=[-1, 1], select="test")
    assert only.layers == {"m": [3, 1]} and only.frame.val_accuracy.isna().all()


def test_probes_reject_bad_input():
    S, y, docs = _synthetic(n=40)
    train, test = split_by_document(docs, 0.3, 0)
    with pytest.raises(ValueError, match="share rows"):
        fit_probes({"m": S}, y, train, np.concatenate([test, train[:1]]))
    with pytest.raises(ValueError, match="out of range"):
        fit_probes({"m": S}, y, train, test, layers=[7])
    with pytest.raises(ValueError, match="rows but there are"):
        fit_probes({"m": S[:, :30]}, y, train, test)
    bad = S.clone()
    bad[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fit_probes({"m": bad}, y, train, test, select="test")
    with pytest.raises(ValueError, match="at least two"):
        fit_probes({"m": S}, np.zeros(40, int), train, test)


def test_probes_on_shuffled_labels_agree_at_chance():
    S, y, docs = _synthetic(n=2000, informative=1, layers=2)
    rng = np.random.default_rng(7)
    train, test = split_by_document(docs, 0.4, 0)
    preds, probas = {}, {}
    for name in ("shuffled-1", "shuffled-2"):
        y_shuffled = y.copy()
        y_shuffled[train] = rng.permutation(y[train])
        res = fit_probes({name: S}, y_shuffled, train, test, layers=[1], select="test", C=0.05)
        preds[name], probas[name] = res.predictions[(name, 1)], res.proba[(name, 1)]
        assert res.accuracy(name, 1) < 0.4  # 4 classes: chance ~ 0.25
    f = agreement_table(preds, y[test], probas).set_index("measure")
    chance = float(sum(np.mean(preds["shuffled-1"] == c) * np.mean(preds["shuffled-2"] == c) for c in range(4)))
    assert f.loc["agreement", "value"] == pytest.approx(chance, abs=0.07)
    assert f.loc["agreement", "value"] == pytest.approx(f.loc["agreement", "expected_independent"], abs=0.07)
    assert abs(f.loc["cohen_kappa", "value"]) < 0.1


# ----------------------------------------------------------------------------- run_agreement
def _corpus(n, labels, docs, name="syn"):
    return Corpus(name=name, source="synthetic", texts=[f"text {i}" for i in range(n)],
                  ids=[str(i) for i in range(n)], labels=[f"c{v}" for v in labels],
                  doc_ids=[f"d{v}" for v in docs])


@pytest.fixture(scope="module")
def run_result():
    n = 300
    S_a, y, docs = _synthetic(n=n, informative=2, layers=4, d=16, seed=0, noise_seed=1, strength=0.5)
    S_b, _, _ = _synthetic(n=n, informative=1, layers=3, d=12, seed=0, noise_seed=2, strength=0.5)
    S_c, _, _ = _synthetic(n=n, informative=3, layers=5, d=8, seed=0, noise_seed=3, strength=0.5)
    stacks = {"a": S_a, "b": S_b, "c": S_c}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return run_agreement(stacks, _corpus(n, y, docs), layer_pairs=[("a", 0, "b", -1)], bootstrap=50,
                             permutations=200), stacks


def test_run_agreement_frames(run_result):
    res, stacks = run_result
    probes, agree, sets = (res.frames[k] for k in ("probes", "agreement", "homogenization"))
    assert len(probes) == 4 + 3 + 5 and set(probes.measure) == {"probe_accuracy"}
    assert res.best_layers == {"a": 2, "b": 1, "c": 3}
    assert list(agree.columns) == AGREEMENT_COLUMNS and list(sets.columns) == SET_COLUMNS
    assert set(agree.selection) == {"best", "final", "asked"}
    best = agree[agree.selection == "best"]
    assert set(zip(best.model_a, best.layer_a)) <= {("a", 2), ("b", 1), ("c", 3)}
    assert set(best.measure) == {"agreement", "cohen_kappa", "error_overlap", "error_overlap_conditional", "jsd"}
    asked = agree[agree.selection == "asked"]
    assert set(zip(asked.model_a, asked.layer_a, asked.model_b, asked.layer_b)) >= {("a", 0, "b", 2)}
    assert (agree.d_a == agree.model_a.map({m: s.shape[2] for m, s in stacks.items()})).all()
    assert agree.ci_low.notna().all() and (agree.n == res.meta["n_test"]).all()
    hb = sets[(sets.selection == "best")]
    assert {"fleiss_kappa", "systemic_failure", "h_avg", "h_unif", "h_worst"} <= set(hb.measure)
    assert set(hb.groups) == {"instances", "labels"}
    assert json.loads(hb.models.iloc[0]) == ["a", "b", "c"] and json.loads(hb.layers.iloc[0]) == [2, 1, 3]
    h = hb[hb.measure.str.startswith("h_")]
    assert h.value.notna().all() and h.p_value.between(0, 1).all()
    # agreement rows equal a direct computation on the stored predictions
    p = res.probes
    row = best[(best.model_a == "a") & (best.model_b == "b") & (best.measure == "cohen_kappa")].iloc[0]
    assert row.value == pytest.approx(cohen_kappa_score(p.predictions[("a", 2)], p.predictions[("b", 1)]))
    # no document on both sides
    docs = np.array([f"d{v}" for v in _synthetic(n=300)[2]])
    assert not set(docs[p.train_idx]) & set(docs[p.test_idx])


def test_run_agreement_needs_labels_and_documents():
    S, y, docs = _synthetic(n=40)
    stacks = {"a": S, "b": S}
    c = _corpus(40, y, docs)
    c.labels = None
    with pytest.raises(ValueError, match="no labels"):
        run_agreement(stacks, c)
    c = _corpus(40, y, docs)
    c.doc_ids = None
    with pytest.raises(ValueError, match="no document ids"):
        run_agreement(stacks, c)
    with pytest.raises(ValueError, match="at least two"):
        run_agreement({"a": S}, _corpus(40, y, docs))
    with pytest.raises(ValueError, match="rows"):
        run_agreement({"a": S, "b": S[:, :30]}, _corpus(40, y, docs))


# ----------------------------------------------------------------------------- native heads
@pytest.fixture(scope="module")
def tiny_heads():
    return {
        "bert-0": tiny_model("bert", 0, head=True),
        "bert-1": tiny_model("bert", 1, head=True),
        "gpt2-0": tiny_model("gpt2", 0, head=True),
        "gpt2-1": tiny_model("gpt2", 1, head=True),
        "llama-0": tiny_model("llama", 0, head=True),
    }


@pytest.mark.parametrize("kind,task", [("bert", "masked-lm"), ("gpt2", "next-token")])
def test_native_head_agreement_on_shared_tokenizers(tiny_heads, kind, task):
    texts = list(TINY_TEXT)
    res = native_head_agreement({f"{kind}-0": tiny_heads[f"{kind}-0"], f"{kind}-1": tiny_heads[f"{kind}-1"],
                                 "self": tiny_heads[f"{kind}-0"]}, texts, permutations=50)
    f = res.frames["agreement"]
    assert list(f.columns) == AGREEMENT_COLUMNS and set(f.task) == {task} and set(f.unit) == {"token"}
    same = f[(f.model_a == f"{kind}-0") & (f.model_b == "self")].set_index("measure")
    assert same.loc["agreement", "value"] == 1.0 and same.loc["jsd", "value"] == pytest.approx(0.0, abs=1e-9)
    other = f[(f.model_a == f"{kind}-0") & (f.model_b == f"{kind}-1")].set_index("measure")
    assert 0.0 <= other.loc["agreement", "value"] < 1.0 and other.loc["jsd", "value"] > 0
    P = res.targets.size
    assert P > len(texts) and all(v.shape == (P,) for v in res.predictions.values())
    acc = res.frames["accuracy"]
    assert set(acc.measure) == {"native_top1_accuracy"} and acc.value.between(0, 1).all()
    if kind == "bert":  # about 15 % of the non-special tokens, at least one per text
        assert P < 0.4 * sum(len(t.split()) for t in texts) + len(texts)


def test_native_head_agreement_refuses_what_cannot_be_compared(tiny_heads):
    texts = list(TINY_TEXT[:4])
    with pytest.raises(ValueError, match="tokenizers differ"):
        native_head_agreement({"g": tiny_heads["gpt2-0"], "l": tiny_heads["llama-0"]}, texts)
    with pytest.raises(ValueError, match="masked LMs or all causal LMs"):
        native_head_agreement({"b": tiny_heads["bert-0"], "g": tiny_heads["gpt2-0"]}, texts)
    with pytest.raises(ValueError, match="head=True"):
        native_head_agreement({"b": tiny_model("bert", 0), "c": tiny_heads["bert-1"]}, texts)
    groups = tokenizer_groups(tiny_heads, texts)
    assert groups == [["bert-0", "bert-1"], ["gpt2-0", "gpt2-1"], ["llama-0"]]


def test_a_model_that_never_fails_is_named_when_homogenization_is_left_out():
    import json as _json
    import warnings as _warnings

    import numpy as _np

    from homoscope.agreement.run import failure_rows

    failures = _np.array([[1, 0, 1, 0], [0, 0, 0, 0]], dtype=bool)
    base = {"models": _json.dumps(["minilm", "mpnet"]), "selection": "best"}
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        failure_rows(failures, base, ["instances"], None, 0, 0, "best layers")
    messages = [str(w.message) for w in caught]
    assert any("model 'mpnet' fails no individual" in m for m in messages), messages
