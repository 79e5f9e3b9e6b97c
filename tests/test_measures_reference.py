"""Slow, straightforward float64 reference implementations (numpy / scipy), one layer pair at a time.

They are written from the papers' formulas, independent of the batched code in homoscope.measures,
and checked here against the published known values. Other measure tests import them.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats


def known_data():
    """The example of Kornblith et al.'s CKA notebook: X first, then the noise for Y."""
    np.random.seed(1337)
    X = np.random.randn(100, 10)
    Y = np.random.randn(100, 10) + X
    return X, Y


def _c(A):
    return A - A.mean(axis=0, keepdims=True)


def _hc(K):
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return H @ K @ H


def _uc(K):
    """U-centering (Szekely & Rizzo 2014), the unbiased-HSIC centering of Kornblith et al.'s code."""
    n = K.shape[0]
    K = K.copy()
    np.fill_diagonal(K, 0.0)
    means = K.sum(axis=0) / (n - 2)
    means = means - means.sum() / (2 * (n - 1))
    K = K - means[:, None] - means[None, :]
    np.fill_diagonal(K, 0.0)
    return K


def _cka_from_grams(K, L):
    return float((K * L).sum() / np.sqrt((K * K).sum() * (L * L).sum()))


def linear_cka(X, Y):
    X, Y = _c(X), _c(Y)
    return float(np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)))


def debiased_cka(X, Y):
    return _cka_from_grams(_uc(X @ X.T), _uc(Y @ Y.T))


def rbf_gram(X, threshold):
    D = scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(X, "sqeuclidean"))
    sigma2 = threshold**2 * np.median(D)
    return np.exp(-D / (2 * sigma2))


def rbf_cka(X, Y, threshold=1.0, debiased=False):
    f = _uc if debiased else _hc
    return _cka_from_grams(f(rbf_gram(X, threshold)), f(rbf_gram(Y, threshold)))


def hsic_unbiased(K, L):
    """Song et al. (2012), Eq. 5."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    one = np.ones(n)
    val = np.trace(K @ L) + one @ K @ one * (one @ L @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ K @ L @ one
    return val / (n * (n - 3))


def minibatch_cka(X, Y, batches):
    """Nguyen et al. (2021): ratio of HSIC sums over the given row batches."""
    kl = kk = ll = 0.0
    for b in batches:
        K, L = X[b] @ X[b].T, Y[b] @ Y[b].T
        kl += hsic_unbiased(K, L)
        kk += hsic_unbiased(K, K)
        ll += hsic_unbiased(L, L)
    return kl / np.sqrt(kk * ll)


def canonical_correlations(X, Y):
    """Bjorck & Golub: singular values of Qx^T Qy, Q from QR of the centered data (full column rank)."""
    qx, _ = np.linalg.qr(_c(X))
    qy, _ = np.linalg.qr(_c(Y))
    return np.linalg.svd(qx.T @ qy, compute_uv=False)[: min(X.shape[1], Y.shape[1])]


def cca_rho(X, Y):
    return float(canonical_correlations(X, Y).mean())


def cca_r2(X, Y):
    return float((canonical_correlations(X, Y) ** 2).mean())


def svcca(X, Y, keep=0.99):
    def reduce(A):
        U, s, _ = np.linalg.svd(_c(A), full_matrices=False)
        frac = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(frac, keep - 1e-12) + 1)
        return U[:, :k] * s[:k]

    return cca_rho(reduce(X), reduce(Y))


def pwcca(X, Y):
    """Morcos et al. (2018): canonical correlations weighted by how much each X-side canonical variate
    accounts for X's neurons, alpha_i ~ sum_j |<h_i, x_j>|."""
    Xc, Yc = _c(X), _c(Y)
    qx, rx = np.linalg.qr(Xc)
    qy, _ = np.linalg.qr(Yc)
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    m = min(X.shape[1], Y.shape[1])
    H = qx @ u[:, :m]  # X-side canonical variates, unit norm
    alpha = np.abs(H.T @ Xc).sum(axis=1)
    alpha = alpha / alpha.sum()
    return float((alpha * rho[:m]).sum())


def procrustes(X, Y):
    A, B = _c(X), _c(Y)
    A, B = A / np.linalg.norm(A), B / np.linalg.norm(B)
    d = max(A.shape[1], B.shape[1])
    A = np.pad(A, ((0, 0), (0, d - A.shape[1])))
    B = np.pad(B, ((0, 0), (0, d - B.shape[1])))
    _, scale = scipy.linalg.orthogonal_procrustes(A, B)  # scale = nuclear norm of A^T B
    return float(scale)


def procrustes_distance(X, Y):
    """Ding et al. (2021): min over orthogonal R of ||A - B R||_F^2 for centered, unit-norm A, B."""
    A, B = _c(X), _c(Y)
    A, B = A / np.linalg.norm(A), B / np.linalg.norm(B)
    d = max(A.shape[1], B.shape[1])
    A = np.pad(A, ((0, 0), (0, d - A.shape[1])))
    B = np.pad(B, ((0, 0), (0, d - B.shape[1])))
    R, _ = scipy.linalg.orthogonal_procrustes(B, A)
    return float(np.linalg.norm(A - B @ R) ** 2)


def _knn_sets(X, k):
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = Z @ Z.T
    out = []
    for i in range(len(S)):
        order = [j for j in np.argsort(-S[i], kind="stable") if j != i]
        out.append(order[:k])
    return out, S


def mutual_knn(X, Y, k):
    nx, _ = _knn_sets(X, k)
    ny, _ = _knn_sets(Y, k)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(nx, ny)]))


def cknna(X, Y, k):
    """Huh et al. (2024): sum over mutual-neighbour pairs of row-centered cosine kernels, normalised."""
    nx, K = _knn_sets(X, k)
    ny, L = _knn_sets(Y, k)
    Kc = K - K.mean(axis=1, keepdims=True)
    Lc = L - L.mean(axis=1, keepdims=True)

    def align(sa, sb, A, B):
        return sum(A[i, j] * B[i, j] for i in range(len(sa)) for j in set(sa[i]) & set(sb[i]))

    return align(nx, ny, Kc, Lc) / np.sqrt(align(nx, nx, Kc, Kc) * align(ny, ny, Lc, Lc))


def rsa(X, Y):
    dx = scipy.spatial.distance.pdist(X, "correlation")
    dy = scipy.spatial.distance.pdist(Y, "correlation")
    return float(scipy.stats.spearmanr(dx, dy)[0])


REFERENCES = {
    "linear_cka": linear_cka,
    "debiased_cka": debiased_cka,
    "rbf_cka": rbf_cka,
    "cca_rho": cca_rho,
    "cca_r2": cca_r2,
    "svcca": svcca,
    "pwcca": pwcca,
    "procrustes": procrustes,
    "procrustes_distance": procrustes_distance,
    "mutual_knn": lambda X, Y: mutual_knn(X, Y, 10),
    "cknna": lambda X, Y: cknna(X, Y, 10),
    "rsa": rsa,
}


# --------------------------------------------------------------------------- the references themselves
def test_references_reproduce_known_values():
    X, Y = known_data()
    assert linear_cka(X, Y) == pytest.approx(0.55761, abs=1e-5)
    assert debiased_cka(X, Y) == pytest.approx(0.51346, abs=1e-5)
    assert rbf_cka(X, Y, threshold=0.5) == pytest.approx(0.65483, abs=1e-5)
    assert cca_r2(X, Y) == pytest.approx(0.5454, abs=1e-5)


def test_reference_unbiased_hsic_matches_u_centering():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(30, 4)), rng.normal(size=(30, 6))
    K, L = X @ X.T, Y @ Y.T
    n = 30
    assert hsic_unbiased(K, L) == pytest.approx((_uc(K) * _uc(L)).sum() / (n * (n - 3)), rel=1e-10)


def test_reference_procrustes_distance_is_two_minus_two_similarity():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(40, 5)), rng.normal(size=(40, 7))
    assert procrustes_distance(X, Y) == pytest.approx(2 - 2 * procrustes(X, Y), abs=1e-12)
