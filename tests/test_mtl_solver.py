"""Tests for attrnet.mtl: prox operators, FISTA, the two convex subproblems (against cvxpy), and fit_mtl."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from attrnet.mtl import (MTLProblem, decision_function, fista, fit_independent, fit_mtl, group_soft_threshold,
                         objective, smooth_L, smooth_S, soft_threshold, solve_L, solve_S)
from attrnet.mtl.prox import group_norms

F64 = torch.float64
GROUPS = [[0, 1], [2], [3, 4]]
N, D, K, M = 40, 6, 3, 5
MU, GAMMA, LAM = 10.0, 10.0, 0.1  # large enough that some blocks / entries are exactly zero, not all
TIGHT = dict(max_iter=20000, tol=0.0, grad_tol=1e-10)  # stop only on the prox-gradient mapping norm


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These problems are tiny: intra-op threads only add synchronisation, which on a busy 2-core box
    # slowed the solver down by two orders of magnitude.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def small_problem(shared: bool, seed: int = 0, weighted: bool = False) -> MTLProblem:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn((N, D) if shared else (M, N, D), generator=g, dtype=F64)
    Y = torch.sign(torch.randn(N, M, generator=g, dtype=F64))
    Y[torch.rand(N, M, generator=g) < 0.2] = float("nan")
    C = 0.5 + torch.rand(N, M, generator=g, dtype=F64) if weighted else None
    return MTLProblem(X, Y, weights=C, groups=GROUPS)


def raw_labels(p: MTLProblem) -> torch.Tensor:
    """The problem's labels back in {-1, +1, NaN} form (MTLProblem stores unknown as 0 with weight 0)."""
    return torch.where(p.weights > 0, p.labels, torch.full_like(p.labels, float("nan")))


def cvx_loss(p: MTLProblem, scores_of_m) -> cp.Expression:
    """sum_m sum_i c_im/2 pos(1 - y_im s_im)^2 with s_m = scores_of_m(m, X_m) (cvxpy affine)."""
    Xn, Yn, Cn = p.features.numpy(), p.labels.numpy(), p.weights.numpy()
    terms = []
    for m in range(M):
        s = scores_of_m(m, Xn if p.shared else Xn[m])
        terms.append(0.5 * cp.sum(cp.multiply(Cn[:, m], cp.square(cp.pos(1 - cp.multiply(Yn[:, m], s))))))
    return cp.sum(cp.hstack(terms))


def solve_cvx(prob: cp.Problem) -> str:
    prob.solve(solver="CLARABEL" if "CLARABEL" in cp.installed_solvers() else None)
    assert prob.status == cp.OPTIMAL, prob.status
    return prob.solver_stats.solver_name


# ---------------------------------------------------------------- prox operators and FISTA

def test_soft_threshold_matches_definition_and_cvxpy():
    x = torch.linspace(-3, 3, 61, dtype=F64)
    t = 0.7
    closed = torch.where(x > t, x - t, torch.where(x < -t, x + t, torch.zeros_like(x)))
    assert torch.allclose(soft_threshold(x, t), closed, atol=0)
    z = cp.Variable(61)
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(z - x.numpy()) + t * cp.norm1(z))).solve()
    assert np.allclose(soft_threshold(x, t).numpy(), z.value, atol=1e-6)


@pytest.mark.parametrize("as_ids", [False, True])
def test_group_soft_threshold_is_the_prox(as_ids):
    g = torch.Generator().manual_seed(1)
    S = torch.randn(4, M, generator=g, dtype=F64)
    S[2, 3:5] = 0.0  # an all-zero block must stay zero, not NaN
    S[1, 2] = 0.05  # a small block that the threshold kills
    t = 0.6
    groups = torch.tensor([0, 0, 1, 2, 2]) if as_ids else [torch.tensor(gr) for gr in GROUPS]
    out = group_soft_threshold(S, groups, t)
    assert torch.isfinite(out).all() and out[1, 2] == 0 and (out[2, 3:5] == 0).all()
    Z = cp.Variable(S.shape)
    pen = cp.sum(cp.hstack([cp.norm(Z[k, gr], 2) for k in range(4) for gr in GROUPS]))
    cp.Problem(cp.Minimize(0.5 * cp.sum_squares(Z - S.numpy()) + t * pen)).solve()
    assert np.allclose(out.numpy(), Z.value, atol=1e-6)
    # Brute force: no random perturbation beats the prox value.
    gid = torch.tensor([0, 0, 1, 2, 2])
    val = lambda Z: 0.5 * ((Z - S) ** 2).sum(-1).sum(-1) + t * group_norms_batched(Z, gid)  # noqa: E731
    pert = out + 1e-2 * torch.randn(2000, *S.shape, generator=g, dtype=F64)
    assert (val(pert) >= val(out[None]) - 1e-12).all()


def group_norms_batched(Z: torch.Tensor, gid: torch.Tensor) -> torch.Tensor:
    return torch.stack([group_norms(z, gid).sum() for z in Z])


@pytest.mark.parametrize("restart", ["gradient", "function", None])
def test_fista_solves_a_lasso(restart):
    g = torch.Generator().manual_seed(2)
    A, y, t = torch.randn(30, 10, generator=g, dtype=F64), torch.randn(30, generator=g, dtype=F64), 2.0
    f_and_grad = lambda x: (0.5 * ((A @ x - y) ** 2).sum(), A.T @ (A @ x - y))  # noqa: E731
    x, info = fista(f_and_grad, lambda v, s: soft_threshold(v, s * t), lambda x: t * x.abs().sum(),
                    torch.zeros(10, dtype=F64), step0=10.0, max_iter=5000, tol=0.0, grad_tol=1e-10,
                    restart=restart)
    z = cp.Variable(10)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(A.numpy() @ z - y.numpy()) + t * cp.norm1(z)))
    prob.solve()
    assert info["converged"] and info["step"] < 10.0  # the too-large first step was backtracked
    assert abs(info["objective"] - prob.value) <= 1e-7 * abs(prob.value)
    assert np.allclose(x.numpy(), z.value, atol=1e-5)


# ---------------------------------------------------------------- problem handling

def test_problem_converts_labels_and_masks_unknowns():
    y01 = torch.tensor([[1.0, 0.0], [float("nan"), 1.0], [0.0, 0.0]])
    p = MTLProblem(torch.randn(3, 4, dtype=F64), y01, groups=[[0], [1]])
    assert torch.equal(p.labels, torch.tensor([[1.0, -1.0], [0.0, 1.0], [-1.0, -1.0]], dtype=F64))
    assert torch.equal(p.weights, torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError):
        MTLProblem(torch.randn(3, 4), torch.tensor([[1.0], [0.0], [-1.0]]))
    with pytest.raises(ValueError):
        MTLProblem(torch.randn(3, 4), y01, groups=[[0, 1], [1]])


def test_shared_and_per_attribute_features_agree():
    p = small_problem(shared=True)
    q = MTLProblem(p.features.expand(M, N, D).clone(), raw_labels(p), groups=GROUPS)
    g = torch.Generator().manual_seed(3)
    L, S, b = (torch.randn(*s, generator=g, dtype=F64) for s in [(D, K), (K, M), (M,)])
    for a, c in zip(smooth_S(p, L, S, b), smooth_S(q, L, S, b)):
        assert torch.allclose(a, c)
    for a, c in zip(smooth_L(p, L, S, b, LAM), smooth_L(q, L, S, b, LAM)):
        assert torch.allclose(a, c)
    assert torch.allclose(decision_function(p.features, L, S, b), decision_function(q.features, L, S, b))


# ---------------------------------------------------------------- the subproblems against cvxpy

@pytest.mark.parametrize("fit_bias", [False, True])
@pytest.mark.parametrize("shared", [True, False])
def test_solve_S_matches_cvxpy_and_kkt(shared, fit_bias):
    p = small_problem(shared, seed=4, weighted=not shared)
    L = torch.randn(D, K, generator=torch.Generator().manual_seed(5), dtype=F64)
    S0 = torch.zeros(K, M, dtype=F64)
    S, b, info = solve_S(p, L, S0, None, MU, fit_bias=fit_bias, **TIGHT)
    assert info["converged"]
    if not fit_bias:
        assert (b == 0).all()

    Sv = cp.Variable((K, M))
    bv = cp.Variable(M) if fit_bias else np.zeros(M)
    Ln = L.numpy()
    pen = cp.sum(cp.hstack([cp.norm(Sv[k, gr], 2) for k in range(K) for gr in GROUPS]))
    prob = cp.Problem(cp.Minimize(cvx_loss(p, lambda m, Xm: Xm @ Ln @ Sv[:, m] + bv[m]) + MU * pen))
    solve_cvx(prob)
    ours = info["objective"]
    assert abs(ours - prob.value) <= 1e-5 * abs(prob.value)
    assert ours <= prob.value * (1 + 1e-7)
    assert abs(objective(p, L, S, b, MU, 0.0, 0.0) - ours) <= 1e-10 * ours

    # KKT: a nonzero block satisfies grad + mu * block/||block|| = 0; a zero block has ||grad|| <= mu.
    _, gS, gb = smooth_S(p, L, S, b)
    norms = group_norms(S, p.gid)
    assert (norms == 0).any() and (norms > 0).any()  # both branches are exercised
    for k in range(K):
        for j, gr in enumerate(GROUPS):
            blk, gblk = S[k, gr], gS[k, gr]
            if norms[k, j] > 0:
                assert (gblk + MU * blk / blk.norm()).norm() <= 1e-6
            else:
                assert gblk.norm() <= MU + 1e-6
    if fit_bias:
        assert gb.abs().max() <= 1e-6


@pytest.mark.parametrize("fit_bias", [False, True])
@pytest.mark.parametrize("shared", [True, False])
def test_solve_L_matches_cvxpy_and_kkt(shared, fit_bias):
    p = small_problem(shared, seed=6, weighted=shared)
    g = torch.Generator().manual_seed(7)
    S = torch.randn(K, M, generator=g, dtype=F64)
    b = torch.randn(M, generator=g, dtype=F64) if fit_bias else None
    L, info = solve_L(p, S, torch.zeros(D, K, dtype=F64), b, GAMMA, LAM, **TIGHT)
    assert info["converged"]

    Lv = cp.Variable((D, K))
    Sn, bn = S.numpy(), (b.numpy() if b is not None else np.zeros(M))
    loss = cvx_loss(p, lambda m, Xm: Xm @ Lv @ Sn[:, m] + bn[m])
    prob = cp.Problem(cp.Minimize(loss + GAMMA * cp.sum(cp.abs(Lv)) + LAM * cp.sum_squares(Lv)))
    solve_cvx(prob)
    ours = info["objective"]
    assert abs(ours - prob.value) <= 1e-5 * abs(prob.value)
    assert ours <= prob.value * (1 + 1e-7)
    assert abs(objective(p, L, S, b, 0.0, GAMMA, LAM) - ours) <= 1e-10 * ours

    # KKT of the l1 term, element-wise: grad = -gamma sign(L) where L != 0, |grad| <= gamma where L == 0.
    _, gL = smooth_L(p, L, S, b, LAM)
    nz = L != 0
    assert nz.any() and (~nz).any()
    assert (gL[nz] + GAMMA * torch.sign(L[nz])).abs().max() <= 1e-6
    assert gL[~nz].abs().max() <= GAMMA + 1e-6


# ---------------------------------------------------------------- fit_mtl

def grouped_data(seed: int, n_train: int = 200, n_few: int = 10, n_test: int = 2000, noise: float = 0.3):
    """W* = L* S*: 6 sparse latent tasks (each on its own 3 features of 20), 3 groups of 4 attributes,
    group j combining latent tasks 2j, 2j+1 only. The last attribute of each group keeps n_few labels."""
    g = torch.Generator().manual_seed(seed)
    Dd, Kk, Mm = 20, 6, 12
    groups = [list(range(4 * j, 4 * j + 4)) for j in range(3)]
    Ls = torch.zeros(Dd, Kk, dtype=F64)
    for k in range(Kk):
        Ls[3 * k:3 * k + 3, k] = torch.randn(3, generator=g, dtype=F64)
    Ss = torch.zeros(Kk, Mm, dtype=F64)
    for j, gr in enumerate(groups):
        Ss[2 * j:2 * j + 2, gr] = torch.randn(2, 4, generator=g, dtype=F64)
    W = Ls @ Ss
    W = W / W.norm(dim=0)
    X = torch.randn(n_train + n_test, Dd, generator=g, dtype=F64)
    Y = torch.sign(X @ W + noise * torch.randn(n_train + n_test, Mm, generator=g, dtype=F64))
    few = [4 * j + 3 for j in range(3)]
    Ytr = Y[:n_train].clone()
    Ytr[n_few:, few] = float("nan")
    return MTLProblem(X[:n_train], Ytr, groups=groups), X[n_train:], Y[n_train:], few


REC_MU, REC_GAMMA, REC_LAM, REC_SEEDS = 30.0, 1.0, 0.1, (0, 1, 2)


@pytest.fixture(scope="module")
def recovery_runs():
    runs = []
    for seed in REC_SEEDS:
        p, Xte, Yte, few = grouped_data(seed)
        res = fit_mtl(p, K=6, mu=REC_MU, gamma=REC_GAMMA, lam=REC_LAM, max_outer=300, tol=1e-6, inner_max_iter=100,
                      inner_tol=1e-7)
        runs.append((p, Xte, Yte, few, res))
    return runs


def test_recovery_group_sparsity_pattern(recovery_runs):
    for p, _, _, _, res in recovery_runs:
        supports = []
        for gr in p.groups:
            mass, rows = res.S[:, gr].norm(dim=1).sort(descending=True)
            frac = mass.cumsum(0) / mass.sum()
            n_rows = int((frac < 0.9).sum()) + 1  # fewest rows holding >= 90% of the group's row-norm mass
            assert n_rows <= 2, (gr, frac)
            supports.append(set(rows[:n_rows].tolist()))
        for i in range(3):
            for j in range(i + 1, 3):
                assert not supports[i] & supports[j], supports  # groups use disjoint latent tasks


def test_recovery_helps_undersampled_attributes(recovery_runs):
    acc_mtl, acc_ind = [], []
    for p, Xte, Yte, few, res in recovery_runs:
        acc = ((decision_function(Xte, res.L, res.S, res.b) > 0) == (Yte > 0)).double().mean(0)
        acc_mtl.append(acc[few].mean().item())
        best = 0.0  # the baseline gets its best ridge on the test set: an oracle advantage
        for lam in (0.01, 0.1, 1.0):
            W, b = fit_independent(p, lam)
            best = max(best, ((Xte @ W + b > 0) == (Yte > 0)).double().mean(0)[few].mean().item())
        acc_ind.append(best)
    assert np.mean(acc_mtl) >= np.mean(acc_ind) + 0.03, (acc_mtl, acc_ind)


def test_history_non_increasing(recovery_runs):
    others = [fit_mtl(small_problem(False, seed=8), K=3, mu=2.0, gamma=1.0, lam=0.1, init=init, fit_bias=fb,
                      max_outer=30, tol=1e-8) for init, fb in [("random", False), ("independent", True)]]
    for res in [r[-1] for r in recovery_runs] + others:
        h = np.array(res.history)
        assert len(h) == res.n_outer + 1 and np.isfinite(h).all()
        assert (np.diff(h) <= 1e-9 * np.abs(h[:-1])).all(), h
        assert set(res.times) == {"init", "S", "L"}


def test_float32_runs_and_keeps_dtype():
    p = small_problem(True, seed=9)
    q = MTLProblem(p.features.float(), raw_labels(p).float(), groups=GROUPS)
    res = fit_mtl(q, K=3, mu=2.0, gamma=1.0, lam=0.1, max_outer=10)
    assert res.L.dtype == res.S.dtype == res.b.dtype == torch.float32
    assert np.isfinite(res.history).all()
