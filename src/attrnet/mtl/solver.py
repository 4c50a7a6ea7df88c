"""Multi-task attribute classifiers W = L S (Abdulnabi et al., IEEE TMM 2015), solved by alternating FISTA.

F(L, S, b) = sum_m sum_i c_im/2 * max(0, 1 - y_im ((L s_m)^T x_i^m + b_m))^2
             + mu * sum_k sum_g ||S[k, G_g]||_2 + gamma * ||L||_1 + lam * ||L||_F^2
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from attrnet.mtl.prox import (fista, group_ids, group_norms, group_soft_threshold, power_lipschitz,
                              soft_threshold)

Tensor = torch.Tensor
log = logging.getLogger(__name__)


@dataclass
class MTLProblem:
    """Training data for M binary attributes.

    features: [N, D] shared by all attributes, or [M, N, D] one matrix per attribute.
    labels: [N, M] in {-1, +1} or {0, 1}; NaN = unknown (masked out of the loss).
    weights: optional [N, M] per-example loss weights c >= 0 (e.g. class balancing); forced to 0 where unknown.
    groups: list of attribute-index lists partitioning range(M); None = one group holding all attributes.
    After construction labels are in {-1, 0, +1} (0 = unknown) and `weights` is the full mask C.
    """

    features: Tensor
    labels: Tensor
    weights: Tensor | None = None
    groups: Sequence[Sequence[int]] | None = None
    gid: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        X = torch.as_tensor(self.features)
        if not X.is_floating_point():
            X = X.double()
        if X.dim() not in (2, 3):
            raise ValueError(f"features must be [N, D] or [M, N, D], got shape {tuple(X.shape)}")
        Y = torch.as_tensor(self.labels).to(dtype=X.dtype, device=X.device)
        N = X.shape[-2]
        if Y.dim() != 2 or Y.shape[0] != N or (X.dim() == 3 and X.shape[0] != Y.shape[1]):
            raise ValueError(f"labels shape {tuple(Y.shape)} does not match features shape {tuple(X.shape)}")
        known = ~torch.isnan(Y)
        vals = Y[known]
        if ((vals != 1) & (vals != 0) & (vals != -1)).any():
            raise ValueError("labels must be in {-1, +1} or {0, 1} (NaN = unknown)")
        if (vals == 0).any():
            if (vals == -1).any():
                raise ValueError("labels mix 0 and -1: use either {0, 1} or {-1, +1}")
            Y = 2 * Y - 1
        C = torch.ones_like(Y) if self.weights is None else \
            torch.as_tensor(self.weights).to(dtype=X.dtype, device=X.device).clone()
        if C.shape != Y.shape or (C[known] < 0).any():
            raise ValueError("weights must be [N, M] and >= 0")
        C[~known] = 0
        self.features, self.labels, self.weights = X, torch.where(known, Y, torch.zeros_like(Y)), C
        M = Y.shape[1]
        if self.groups is None:
            self.groups = [list(range(M))]
        self.gid = group_ids(self.groups, M, X.device)

    @property
    def shared(self) -> bool:
        return self.features.dim() == 2

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, D, M)."""
        return self.features.shape[-2], self.features.shape[-1], self.labels.shape[1]


# ---------------------------------------------------------------- linear maps and the loss

def _scores(Z: Tensor, W: Tensor) -> Tensor:
    """[N, M] scores z_i^m . w_m for shared Z [N, P] or per-attribute Z [M, N, P]; W [P, M]."""
    return Z @ W if Z.dim() == 2 else torch.einsum("mnp,pm->nm", Z, W)


def _adjoint(Z: Tensor, R: Tensor) -> Tensor:
    """[P, M] adjoint of _scores: sum_i z_i^m R_im."""
    return Z.T @ R if Z.dim() == 2 else torch.einsum("mnp,nm->pm", Z, R)


def squared_hinge(scores: Tensor, Y: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """sum c/2 max(0, 1 - y s)^2 and its gradient w.r.t. the scores, -c y max(0, 1 - y s)."""
    h = torch.clamp(1 - Y * scores, min=0)
    return 0.5 * (C * h * h).sum(), -C * Y * h


def _bias(b: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros(like.shape[1], dtype=like.dtype, device=like.device) if b is None else b


def smooth_S(problem: MTLProblem, L: Tensor, S: Tensor, b: Tensor | None = None,
             XL: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Squared-hinge loss as a function of (S, b): value, dF/dS = L^T X^T R, dF/db = sum_i R."""
    XL = problem.features @ L if XL is None else XL
    val, R = squared_hinge(_scores(XL, S) + _bias(b, S), problem.labels, problem.weights)
    return val, _adjoint(XL, R), R.sum(0)


def smooth_L(problem: MTLProblem, L: Tensor, S: Tensor, b: Tensor | None, lam: float) -> tuple[Tensor, Tensor]:
    """Loss + lam ||L||_F^2 as a function of L: value, gradient X^T R S^T + 2 lam L."""
    val, R = squared_hinge(_scores(problem.features, L @ S) + _bias(b, S), problem.labels, problem.weights)
    return val + lam * (L * L).sum(), _adjoint(problem.features, R) @ S.T + 2 * lam * L


def objective(problem: MTLProblem, L: Tensor, S: Tensor, b: Tensor | None, mu: float, gamma: float,
              lam: float) -> float:
    """Full F(L, S, b) = loss + mu*sum_{k,g}||S[k,G_g]|| + gamma*||L||_1 + lam*||L||_F^2."""
    val, _ = smooth_L(problem, L, S, b, lam)
    return float(val + mu * group_norms(S, problem.gid).sum() + gamma * L.abs().sum())


def decision_function(features: Tensor, L: Tensor, S: Tensor, b: Tensor | None = None) -> Tensor:
    """[N, M] scores x_i^m . (L s_m) + b_m for [N, D] or [M, N, D] features."""
    W = L @ S
    return _scores(features.to(W.dtype), W) + _bias(b, W)


# ---------------------------------------------------------------- the convex subproblems

def _linear_fit(problem: MTLProblem, Z: Tensor, W0: Tensor, b0: Tensor, fit_bias: bool, ridge: float,
                prox_W, g_W, **fista_kw: Any) -> tuple[Tensor, Tensor, dict]:
    """min over (W, b) of loss(scores = Z w_m + b_m) + ridge ||W||_F^2 + g_W(W); b kept fixed unless fit_bias.

    W and b are stacked into one [P+1, M] variable so FISTA and its restarts treat them jointly.
    """
    P = W0.shape[0]
    Y, C = problem.labels, problem.weights

    def split(x: Tensor) -> tuple[Tensor, Tensor]:
        return (x[:P], x[P]) if fit_bias else (x, b0)

    def f_and_grad(x: Tensor) -> tuple[Tensor, Tensor]:
        W, b = split(x)
        val, R = squared_hinge(_scores(Z, W) + b, Y, C)
        gW = _adjoint(Z, R) + 2 * ridge * W
        val = val + ridge * (W * W).sum()
        return val, (torch.cat([gW, R.sum(0)[None]]) if fit_bias else gW)

    def f(x: Tensor) -> Tensor:
        W, b = split(x)
        return squared_hinge(_scores(Z, W) + b, Y, C)[0] + ridge * (W * W).sum()

    def prox(v: Tensor, step: float) -> Tensor:
        if not fit_bias:
            return prox_W(v, step)
        return torch.cat([prox_W(v[:P], step), v[P:]])  # the bias is unpenalised

    def hess_bound(v: Tensor) -> Tensor:
        # Gauss-Newton operator of the weighted least-squares majorant: bounds the squared hinge curvature.
        W, b = split(v) if fit_bias else (v, 0)
        R = C * (_scores(Z, W) + b)
        gW = _adjoint(Z, R) + 2 * ridge * W
        return torch.cat([gW, R.sum(0)[None]]) if fit_bias else gW

    x0 = torch.cat([W0, b0[None]]) if fit_bias else W0
    lip = power_lipschitz(hess_bound, x0)
    x, info = fista(f_and_grad, prox, lambda x: g_W(split(x)[0]), x0, 1.0 / max(lip, 1e-12), f=f, **fista_kw)
    W, b = split(x)
    return W, b.clone(), info


def solve_S(problem: MTLProblem, L: Tensor, S0: Tensor, b0: Tensor | None, mu: float, fit_bias: bool = True,
            max_iter: int = 500, tol: float = 1e-9, grad_tol: float | None = None,
            restart: str | None = "gradient") -> tuple[Tensor, Tensor, dict]:
    """argmin_{S, b} loss(L S, b) + mu sum_{k,g} ||S[k, G_g]||_2 (L fixed) by FISTA + group soft-thresholding.

    Returns (S, b, info); info['objective'] is the subproblem objective (loss + group penalty).
    """
    gid = problem.gid
    XL = problem.features @ L  # [N, K] or [M, N, K]: the S-step is a linear model on these features
    return _linear_fit(problem, XL, S0, _bias(b0, S0), fit_bias, 0.0,
                       lambda v, s: group_soft_threshold(v, gid, s * mu),
                       lambda S: mu * float(group_norms(S, gid).sum()),
                       max_iter=max_iter, tol=tol, grad_tol=grad_tol, restart=restart)


def solve_L(problem: MTLProblem, S: Tensor, L0: Tensor, b: Tensor | None, gamma: float, lam: float,
            max_iter: int = 500, tol: float = 1e-9, grad_tol: float | None = None,
            restart: str | None = "gradient") -> tuple[Tensor, dict]:
    """argmin_L loss(L S, b) + lam ||L||_F^2 + gamma ||L||_1 (S, b fixed) by FISTA + soft-thresholding."""
    X, Y, C = problem.features, problem.labels, problem.weights
    b = _bias(b, S)

    def hess_bound(V: Tensor) -> Tensor:
        return _adjoint(X, C * _scores(X, V @ S)) @ S.T + 2 * lam * V

    lip = power_lipschitz(hess_bound, L0)
    L, info = fista(lambda L: smooth_L(problem, L, S, b, lam),
                    lambda v, s: soft_threshold(v, s * gamma),
                    lambda L: gamma * float(L.abs().sum()),
                    L0, 1.0 / max(lip, 1e-12), max_iter=max_iter, tol=tol, grad_tol=grad_tol, restart=restart,
                    f=lambda L: squared_hinge(_scores(X, L @ S) + b, Y, C)[0] + lam * (L * L).sum())
    return L, info


def fit_independent(problem: MTLProblem, lam: float, fit_bias: bool = True, max_iter: int = 1000,
                    tol: float = 1e-9, grad_tol: float | None = None) -> tuple[Tensor, Tensor]:
    """M independent classifiers: argmin_{w_m, b_m} loss + lam ||w_m||^2, solved jointly (the problem separates).

    Per-attribute features are used as they are (w_m sees only X^m). Returns W [D, M], b [M].
    """
    N, D, M = problem.shape
    X = problem.features
    W0 = torch.zeros(D, M, dtype=X.dtype, device=X.device)
    W, b, info = _linear_fit(problem, X, W0, _bias(None, W0), fit_bias, lam, lambda v, s: v, lambda W: 0.0,
                             max_iter=max_iter, tol=tol, grad_tol=grad_tol)
    log.debug("fit_independent: %d FISTA iterations, objective %.6g", info["n_iter"], info["objective"])
    return W, b


# ---------------------------------------------------------------- alternating minimisation

@dataclass
class MTLResult:
    """Output of fit_mtl. history[0] is F at the initial point, then one value per outer iteration."""

    L: Tensor
    S: Tensor
    b: Tensor
    history: list[float]
    times: dict[str, float]
    n_outer: int
    converged: bool

    @property
    def W(self) -> Tensor:
        return self.L @ self.S


def _init(problem: MTLProblem, K: int, lam: float, init: str, seed: int, fit_bias: bool,
          init_iter: int) -> tuple[Tensor, Tensor, Tensor]:
    N, D, M = problem.shape
    X = problem.features
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=X.dtype).to(X.device)  # noqa: E731
    if init == "random":
        return rand(D, K) / D ** 0.5, rand(K, M) / K ** 0.5, torch.zeros(M, dtype=X.dtype, device=X.device)
    if init != "independent":
        raise ValueError(f"init must be 'independent' or 'random', got {init!r}")
    W, b = fit_independent(problem, lam, fit_bias, max_iter=init_iter, tol=1e-6)
    U, sig, Vt = torch.linalg.svd(W, full_matrices=False)
    r = min(K, sig.numel())
    root = sig[:r].sqrt()
    L, S = U[:, :r] * root, root[:, None] * Vt[:r]
    if r < K:
        # K > rank(W): pad with small random directions; all-zero columns/rows would be a stationary point.
        scale = 1e-3 * float(root.max()) if r else 1e-3
        L = torch.cat([L, scale * rand(D, K - r)], 1)
        S = torch.cat([S, scale * rand(K - r, M)], 0)
    return L, S, b if fit_bias else torch.zeros_like(b)


def fit_mtl(problem: MTLProblem, K: int, mu: float, gamma: float, lam: float, max_outer: int = 50,
            tol: float = 1e-6, init: str = "independent", seed: int = 0, fit_bias: bool = True,
            inner_max_iter: int = 300, inner_tol: float = 1e-9, init_iter: int = 100,
            restart: str | None = "gradient") -> MTLResult:
    """Alternate S-step (group soft-threshold FISTA, with b) and L-step (soft-threshold FISTA) on F(L, S, b).

    Each inner solve is warm-started and returns an iterate no worse than its start, so F never increases.
    Stops when (F_prev - F) / F_prev < tol or after max_outer outer iterations.
    """
    times = {"init": 0.0, "S": 0.0, "L": 0.0}
    t0 = time.perf_counter()
    L, S, b = _init(problem, K, lam, init, seed, fit_bias, init_iter)
    times["init"] = time.perf_counter() - t0
    F = objective(problem, L, S, b, mu, gamma, lam)
    history, converged, it = [F], False, 0
    log.info("fit_mtl: K=%d mu=%g gamma=%g lam=%g init=%s, F0=%.8g", K, mu, gamma, lam, init, F)
    for it in range(1, max_outer + 1):
        t0 = time.perf_counter()
        S, b, info_S = solve_S(problem, L, S, b, mu, fit_bias, inner_max_iter, inner_tol, restart=restart)
        t1 = time.perf_counter()
        L, info_L = solve_L(problem, S, L, b, gamma, lam, inner_max_iter, inner_tol, restart=restart)
        times["S"] += t1 - t0
        times["L"] += time.perf_counter() - t1
        F_new = objective(problem, L, S, b, mu, gamma, lam)
        history.append(F_new)
        log.info("fit_mtl outer %d: F=%.10g (S: %d it, L: %d it)", it, F_new, info_S["n_iter"], info_L["n_iter"])
        rel = (F - F_new) / max(abs(F), torch.finfo(L.dtype).tiny)
        F = F_new
        if rel < tol:
            converged = True
            break
    return MTLResult(L=L, S=S, b=b, history=history, times=times, n_outer=it, converged=converged)
