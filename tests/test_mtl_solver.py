"""Tests for attrnet.mtl: prox operators, FISTA, the two convex subproblems (against cvxpy), and fit_mtl."""

from __future__ import annotations

import dataclasses

import cvxpy as cp
import numpy as np
import pytest
import torch

from attrnet.config import Config
from attrnet.mtl import (
    MTLProblem,
    MTLResult,
    decision_function,
    fista,
    fit_independent,
    fit_mtl,
    group_soft_threshold,
    objective,
    smooth_L,
    smooth_S,
    soft_threshold,
    solve_L,
    solve_S,
)
from attrnet.mtl.prox import conjugate_gradient, group_norms
from attrnet.mtl.solver import _init
from attrnet.paper.pipeline import solve_mtl

F64 = torch.float64
GROUPS = [[0, 1], [2], [3, 4]]
N, D, K, M = 40, 6, 3, 5
MU, GAMMA, LAM = 10.0, 10.0, 0.1  # large enough that some blocks / entries are exactly zero, not all
TIGHT = dict(max_iter=20000, tol=0.0, grad_tol=1e-10)  # stop only on the prox-gradient mapping norm
# fit_mtl run to the end: its stopping rule's own error (tol) is negligible next to the settings under test.
TIGHT_OUTER = dict(max_outer=5000, tol=1e-12, inner_max_iter=20000, inner_tol=1e-14)
CVX_REL = 1e-7  # relative accuracy granted to a cvxpy (CLARABEL, tolerances 1e-8) optimum, as in the tests below


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
    for m in range(Yn.shape[1]):
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


def lasso(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    A, y, t = torch.randn(30, 10, generator=g, dtype=F64), torch.randn(30, generator=g, dtype=F64), 2.0
    f_and_grad = lambda x: (0.5 * ((A @ x - y) ** 2).sum(), A.T @ (A @ x - y))  # noqa: E731
    return f_and_grad, (lambda v, s: soft_threshold(v, s * t)), (lambda x: t * x.abs().sum())


def test_fista_polish_is_kept_only_when_it_lowers_F():
    f_and_grad, prox, g = lasso()
    x0 = torch.zeros(10, dtype=F64)
    plain, info = fista(f_and_grad, prox, g, x0, step0=1e-2, max_iter=5000, tol=0.0, grad_tol=1e-10)
    # A polish proposing a worse point is never taken: the run is the plain one, step for step.
    worse, info_w = fista(f_and_grad, prox, g, x0, step0=1e-2, max_iter=5000, tol=0.0, grad_tol=1e-10,
                          polish=lambda x: x + 1.0)
    assert info_w["n_polished"] == 0 and info_w["history"] == info["history"] and torch.equal(worse, plain)
    # A polish proposing the solution is taken at the first try and the next step stops on the gradient test.
    sol, _ = fista(f_and_grad, prox, g, x0, step0=1e-2, max_iter=5000, tol=0.0, grad_tol=1e-13)
    _, info_e = fista(f_and_grad, prox, g, x0, step0=1e-2, max_iter=5000, tol=0.0, grad_tol=1e-10,
                      polish=lambda x: sol, polish_every=5)
    assert info_e["n_polished"] == 1 and info_e["n_iter"] == 6
    assert info_e["objective"] <= info["objective"] * (1 + 8 * torch.finfo(F64).eps)  # equal up to rounding


def test_conjugate_gradient_meets_its_residual_test():
    g = torch.Generator().manual_seed(11)
    B = torch.randn(20, 20, generator=g, dtype=F64)
    A, rhs = B @ B.T + 0.1 * torch.eye(20, dtype=F64), torch.randn(20, generator=g, dtype=F64)
    x, n = conjugate_gradient(lambda v: A @ v, rhs, max_iter=1000, rtol=1e-10)
    assert n <= 1000 and (A @ x - rhs).norm() <= 1e-10 * rhs.norm() * (1 + 1e-6)
    x5, n5 = conjugate_gradient(lambda v: A @ v, rhs, max_iter=5)
    assert n5 == 5 and 0.5 * x5 @ A @ x5 - rhs @ x5 < 0  # cut short: still lowers the quadratic


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


@pytest.mark.parametrize("newton", [True, False])
@pytest.mark.parametrize("fit_bias", [False, True])
@pytest.mark.parametrize("shared", [True, False])
def test_solve_L_matches_cvxpy_and_kkt(shared, fit_bias, newton):
    p = small_problem(shared, seed=6, weighted=shared)
    g = torch.Generator().manual_seed(7)
    S = torch.randn(K, M, generator=g, dtype=F64)
    b = torch.randn(M, generator=g, dtype=F64) if fit_bias else None
    L, info = solve_L(p, S, torch.zeros(D, K, dtype=F64), b, GAMMA, LAM, newton=newton, **TIGHT)
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


REC_MU, REC_GAMMA, REC_LAM, REC_SEEDS, REC_TOL = 30.0, 1.0, 0.1, (0, 1, 2), 1e-6


@pytest.fixture(scope="module")
def recovery_runs():
    runs = []
    for seed in REC_SEEDS:
        p, Xte, Yte, few = grouped_data(seed)
        res = fit_mtl(p, K=6, mu=REC_MU, gamma=REC_GAMMA, lam=REC_LAM, max_outer=500, tol=REC_TOL, inner_max_iter=100,
                      inner_tol=1e-10)
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


def block_gaps(p: MTLProblem, res: MTLResult, mu: float, gamma: float, lam: float, fit_bias: bool) -> tuple:
    """(F - min over (S, b), F - min over L) / F at the result, each block minimum from cvxpy."""
    L, S, b = (t.numpy() for t in (res.L, res.S, res.b))
    Kk, Mm = S.shape
    F = objective(p, res.L, res.S, res.b, mu, gamma, lam)
    pen_L = gamma * np.abs(L).sum() + lam * (L * L).sum()
    Sv = cp.Variable((Kk, Mm))
    bv = cp.Variable(Mm) if fit_bias else b
    pen_S = cp.sum(cp.hstack([cp.norm(Sv[k, gr], 2) for k in range(Kk) for gr in p.groups]))
    s_block = cp.Problem(cp.Minimize(cvx_loss(p, lambda m, Xm: Xm @ L @ Sv[:, m] + bv[m]) + mu * pen_S))
    solve_cvx(s_block)
    Lv = cp.Variable(L.shape)
    l_block = cp.Problem(cp.Minimize(cvx_loss(p, lambda m, Xm: Xm @ Lv @ S[:, m] + b[m])
                                     + gamma * cp.sum(cp.abs(Lv)) + lam * cp.sum_squares(Lv)))
    solve_cvx(l_block)
    pen_S_val = mu * float(group_norms(res.S, p.gid).sum())
    return (F - s_block.value - pen_L) / F, (F - l_block.value - pen_S_val) / F


def check_real_progress(p: MTLProblem, res: MTLResult, mu: float, gamma: float, lam: float, tol: float,
                        fit_bias: bool = True) -> None:
    """What a converged fit_mtl must show, beyond a history that never goes up.

    Its stopping rule estimates F - lim F <= tol F. The next step from the result is an S-step, and F only
    goes down from there, so lim F <= min over (S, b) of F at the result's L: the S-block gap is at most tol F.
    The L-step ran last and stops on a relative change <= inner_tol, far below tol: its gap is below tol F too.
    A solver that returns its start, or stops while still making progress, has a block gap of the size of the
    progress left.
    """
    h = np.array(res.history)
    assert len(h) == res.n_outer + 1 and np.isfinite(h).all()
    assert (np.diff(h) <= 1e-9 * np.abs(h[:-1])).all(), h
    assert res.converged and res.remaining <= tol
    gap_S, gap_L = block_gaps(p, res, mu, gamma, lam, fit_bias)
    for gap in (gap_S, gap_L):
        assert -CVX_REL <= gap <= tol + CVX_REL, (gap_S, gap_L, tol)


def test_outer_iterations_make_real_progress(recovery_runs):
    for p, _, _, _, res in recovery_runs:
        check_real_progress(p, res, REC_MU, REC_GAMMA, REC_LAM, REC_TOL)
        assert set(res.times) == {"init", "S", "L", "extrapolate"}
    for init, fb in [("random", False), ("independent", True)]:
        p = small_problem(False, seed=8)
        res = fit_mtl(p, K=3, mu=2.0, gamma=1.0, lam=0.1, init=init, fit_bias=fb, max_outer=500, tol=1e-8)
        check_real_progress(p, res, 2.0, 1.0, 0.1, 1e-8, fit_bias=fb)


def test_progress_check_fails_for_a_solver_that_stops_early():
    # The check above must reject a solver that returns its start (a history of one constant value, which
    # FISTA's best-iterate rule alone would allow) and one that stops after an outer iteration, even when
    # they claim to have converged.
    p = small_problem(False, seed=8)
    L0, S0, b0 = _init(p, 3, 0.1, "independent", 0, True, 100)
    F0 = objective(p, L0, S0, b0, 2.0, 1.0, 0.1)
    start = MTLResult(L0, S0, b0, [F0, F0], {}, 1, True, 0.0, 0.0)
    one = dataclasses.replace(fit_mtl(p, K=3, mu=2.0, gamma=1.0, lam=0.1, max_outer=1), converged=True, remaining=0.0)
    for res in (start, one):
        with pytest.raises(AssertionError):
            check_real_progress(p, res, 2.0, 1.0, 0.1, 1e-8)


def six_attribute_problem(seed: int = 0, n: int = 300, d: int = 64) -> MTLProblem:
    """6 attributes in 2 groups of 3, each group driven by 2 sparse latent tasks; features with a decaying
    spectrum (condition number of X^T X ~120, as penultimate CNN features are correlated), standardised.
    The instance of benchmarks/solver_convergence.py."""
    g = torch.Generator().manual_seed(seed)
    groups = [[0, 1, 2], [3, 4, 5]]
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    X = torch.randn(n, d, generator=g, dtype=F64) @ ((torch.arange(1, d + 1, dtype=F64) ** -0.5)[:, None] * Q.T)
    X = (X - X.mean(0)) / X.std(0)
    L_true = torch.zeros(d, 4, dtype=F64)
    for k in range(4):
        L_true[5 * k:5 * k + 5, k] = torch.randn(5, generator=g, dtype=F64)
    S_true = torch.zeros(4, 6, dtype=F64)
    for j, gr in enumerate(groups):
        S_true[2 * j:2 * j + 2, gr] = torch.randn(2, 3, generator=g, dtype=F64)
    s = X @ (L_true @ S_true)
    Y = torch.sign(s / s.std(0) + 0.3 * torch.randn(n, 6, generator=g, dtype=F64))
    return MTLProblem(X, Y, groups=groups)


SIX_K, SIX_MU, SIX_GAMMA, SIX_LAM = 4, 10.0, 1.0, 0.1


def test_pipeline_solve_matches_a_tight_solve():
    """The pipeline's solve with the shipped defaults (MTLConfig) reaches the converged solution.

    The solver before the change, with the old defaults (max_outer=30, tol=1e-5, 100 inner iterations at
    1e-6), stopped 1.2% above it with one of its two zero blocks of S. By the stopping rule, F - lim F <= tol F.
    """
    cfg = Config()
    p = six_attribute_problem()
    res = solve_mtl(p, cfg, SIX_K, SIX_MU, SIX_GAMMA, SIX_LAM)
    ref = fit_mtl(p, SIX_K, SIX_MU, SIX_GAMMA, SIX_LAM, seed=cfg.train.seed, fit_bias=cfg.mtl.fit_bias,
                  **TIGHT_OUTER)
    assert res.converged and ref.converged
    F, F_ref = res.history[-1], ref.history[-1]
    assert abs(F - F_ref) <= (cfg.mtl.tol + TIGHT_OUTER["tol"]) * F_ref, (F, F_ref)
    zero, zero_ref = group_norms(res.S, p.gid) == 0, group_norms(ref.S, p.gid) == 0
    assert zero_ref.any() and torch.equal(zero, zero_ref)


def test_L_step_polish_pays_for_itself():
    # The tight L-step of benchmarks/solver_convergence.py: with the Newton polish, FISTA iterations plus
    # Hessian products (each about one FISTA iteration's work) are fewer than FISTA alone needs, same optimum.
    p = six_attribute_problem()
    L0, S0, b0 = _init(p, SIX_K, SIX_LAM, "independent", 0, True, 100)
    S, b, _ = solve_S(p, L0, S0, b0, SIX_MU, True, **TIGHT)
    _, plain = solve_L(p, S, L0, b, SIX_GAMMA, SIX_LAM, newton=False, **TIGHT)
    _, polished = solve_L(p, S, L0, b, SIX_GAMMA, SIX_LAM, newton=True, **TIGHT)
    assert plain["converged"] and polished["converged"] and polished["n_polished"] >= 1
    assert polished["n_iter"] + polished["n_cg"] < plain["n_iter"]
    assert abs(polished["objective"] - plain["objective"]) <= 1e-10 * plain["objective"]


def test_float32_runs_and_keeps_dtype():
    p = small_problem(True, seed=9)
    q = MTLProblem(p.features.float(), raw_labels(p).float(), groups=GROUPS)
    res = fit_mtl(q, K=3, mu=2.0, gamma=1.0, lam=0.1, max_outer=10)
    assert res.L.dtype == res.S.dtype == res.b.dtype == torch.float32
    assert np.isfinite(res.history).all()
