"""Proximal operators and a generic FISTA solver (accelerated proximal gradient).

Everything is batched torch and works on whatever device/dtype the inputs carry.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

Tensor = torch.Tensor


def soft_threshold(x: Tensor, t: float | Tensor) -> Tensor:
    """prox of t*||.||_1: sign(x) * max(|x| - t, 0), element-wise."""
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0)


def group_ids(groups_index: "Tensor | Sequence", m: int, device: torch.device | None = None) -> Tensor:
    """Normalise a grouping of the m columns to a [m] LongTensor of group ids.

    Accepts a [m] tensor of ids, or a list of index collections that must partition range(m).
    """
    if isinstance(groups_index, Tensor):
        gid = groups_index.long().reshape(-1)
        if gid.numel() != m or (m and int(gid.min()) < 0):
            raise ValueError(f"a group-id tensor must have {m} entries, all >= 0")
        return gid.to(device) if device is not None else gid
    gid = torch.full((m,), -1, dtype=torch.long)
    for g, idx in enumerate(groups_index):
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1).cpu()
        if idx.numel() == 0:
            continue
        if int(idx.min()) < 0 or int(idx.max()) >= m:
            raise ValueError(f"group {g} has a column index outside [0, {m})")
        if (gid[idx] >= 0).any() or idx.unique().numel() != idx.numel():
            raise ValueError(f"group {g} repeats a column already in a group: groups must partition the columns")
        gid[idx] = g
    if (gid < 0).any():
        missing = torch.nonzero(gid < 0).reshape(-1).tolist()
        raise ValueError(f"columns {missing} are in no group: groups must partition the columns")
    return gid.to(device) if device is not None else gid


def group_norms(S: Tensor, gid: Tensor, n_groups: int | None = None) -> Tensor:
    """[K, G] matrix of ||S[k, G_g]||_2 (G = n_groups, by default max id + 1: a read of gid) via one scatter-add,
    no loop over groups."""
    if n_groups is None:
        n_groups = int(gid.max()) + 1 if gid.numel() else 0
    sq = torch.zeros(S.shape[0], n_groups, dtype=S.dtype, device=S.device)
    sq.index_add_(1, gid if gid.device == S.device else gid.to(S.device), S * S)
    return sq.sqrt()


def group_lasso_penalty(S: Tensor, groups_index: "Tensor | Sequence") -> Tensor:
    """sum_k sum_g ||S[k, G_g]||_2 (scalar tensor)."""
    return group_norms(S, group_ids(groups_index, S.shape[1], S.device)).sum()


def group_soft_threshold(S: Tensor, groups_index: "Tensor | Sequence", t: float | Tensor) -> Tensor:
    """prox of t*sum_{k,g}||S[k,G_g]||_2: each block scaled by max(0, 1 - t/||block||)."""
    gid = group_ids(groups_index, S.shape[1], S.device)
    return block_soft_threshold(S, gid, int(gid.max()) + 1 if gid.numel() else 0, t)


def block_soft_threshold(S: Tensor, gid: Tensor, n_groups: int, t: float | Tensor) -> Tensor:
    """group_soft_threshold with the grouping prepared: gid [m] ids on S's device, n_groups of them. Nothing is
    checked or read back, so it never waits for a GPU (the latent head's proximal step after every batch)."""
    norms = group_norms(S, gid, n_groups)
    # Blocks with zero norm stay zero; guard the division instead of producing NaN.
    scale = torch.clamp(1 - t / torch.clamp(norms, min=torch.finfo(S.dtype).tiny), min=0)
    return S * scale[:, gid]


def fista(f_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]],
          prox: Callable[[Tensor, float], Tensor],
          g: Callable[[Tensor], Tensor | float],
          x0: Tensor,
          step0: float,
          max_iter: int = 1000,
          tol: float = 1e-8,
          grad_tol: float | None = None,
          restart: str | None = "gradient",
          backtrack: float = 0.5,
          f: Callable[[Tensor], Tensor] | None = None,
          polish: Callable[[Tensor], Tensor | None] | None = None,
          polish_every: int = 10) -> tuple[Tensor, dict]:
    """Minimise F(x) = f(x) + g(x) with FISTA, backtracking line search and adaptive restart.

    x+ = prox(y - s*grad f(y), s); s shrinks by `backtrack` until
    f(x+) <= f(y) + <grad f(y), x+ - y> + ||x+ - y||^2 / (2s) (Beck & Teboulle 2009).
    restart: "gradient" resets momentum when <y - x+, x+ - x> > 0, "function" when F(x+) > F(x)
    (O'Donoghue & Candes 2015), None never.
    Stops when |F(x+) - F(x)| <= tol * |F(x)| (tol > 0) or, if grad_tol is given, when the prox-gradient
    mapping ||x+ - y|| / s <= grad_tol.
    polish: optional map from an iterate to a candidate point or None (e.g. a Newton step on the iterate's smooth
    piece), tried every `polish_every` iterations; a candidate with lower F replaces the iterate and restarts
    the momentum. Returns the best iterate seen (F(result) <= F(x0) up to rounding) and
    info {n_iter, objective, history, step, n_restarts, n_polished, converged, grad_map_norm}.
    """
    if restart not in ("gradient", "function", None):
        raise ValueError(f"restart must be 'gradient', 'function' or None, got {restart!r}")
    f_val = f if f is not None else (lambda z: f_and_grad(z)[0])
    x = x0.detach().clone()
    F_x = float(f_val(x)) + float(g(x))
    best_x, best_F = x, F_x
    history = [F_x]
    y, t, step = x, 1.0, float(step0)
    fy, gy = f_and_grad(y)
    fy = float(fy)
    n_restarts, n_polished, converged, gm_norm, it = 0, 0, False, math.inf, 0
    eps = 8 * torch.finfo(x0.dtype).eps
    for it in range(1, max_iter + 1):
        while True:
            x_new = prox(y - step * gy, step)
            d = x_new - y
            fx_new = float(f_val(x_new))
            quad = fy + float((gy * d).sum()) + float((d * d).sum()) / (2 * step)
            # Slack of a few ulps so rounding near the optimum cannot shrink the step forever.
            if fx_new <= quad + eps * max(1.0, abs(fy)) or step < 1e-30:
                break
            step *= backtrack
        F_new = fx_new + float(g(x_new))
        gm_norm = float(d.norm()) / step
        if restart == "gradient":
            do_restart = float(((y - x_new) * (x_new - x)).sum()) > 0
        elif restart == "function":
            do_restart = F_new > F_x
        else:
            do_restart = False
        rel_change = abs(F_x - F_new) / max(abs(F_x), torch.finfo(x0.dtype).tiny)
        done = (grad_tol is not None and gm_norm <= grad_tol) or (tol > 0 and rel_change <= tol) or gm_norm == 0
        if polish is not None and not done and it % polish_every == 0:
            z = polish(x_new)
            F_z = math.inf if z is None else float(f_val(z)) + float(g(z))
            if F_z < F_new:  # the momentum's direction came from the replaced iterate: drop it
                x_new, F_new, do_restart, n_polished = z, F_z, True, n_polished + 1
        history.append(F_new)
        if F_new < best_F:
            best_x, best_F = x_new, F_new
        if done:
            converged = True
            x, F_x = x_new, F_new
            break
        if do_restart:
            n_restarts += 1
            t, y = 1.0, x_new
        else:
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            y = x_new + ((t - 1) / t_new) * (x_new - x)
            t = t_new
        x, F_x = x_new, F_new
        fy, gy = f_and_grad(y)
        fy = float(fy)
    # Near the optimum F is flat to round-off while the iterates still improve (F error ~ distance^2):
    # prefer the last iterate unless it is worse than the best by more than rounding.
    if F_x <= best_F + eps * abs(best_F):
        best_x, best_F = x, F_x
    info = dict(n_iter=it, objective=best_F, history=history, step=step, n_restarts=n_restarts, n_polished=n_polished,
                converged=converged, grad_map_norm=gm_norm)
    return best_x, info


def power_lipschitz(matvec: Callable[[Tensor], Tensor], like: Tensor, n_iter: int = 50,
                    seed: int = 0) -> float:
    """Largest eigenvalue of a PSD operator by power iteration (slightly inflated, since it converges from below)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(like.shape, generator=gen, dtype=like.dtype).to(like.device)
    v = v / v.norm()
    lam = 0.0
    for _ in range(n_iter):
        w = matvec(v)
        lam = float(w.norm())
        if lam == 0:
            return 0.0
        v = w / lam
    return 1.05 * lam


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], rhs: Tensor, max_iter: int,
                       rtol: float = 1e-10) -> tuple[Tensor, int]:
    """Solve A x = rhs for a symmetric positive definite operator A by conjugate gradients from x = 0.

    Stops when ||rhs - A x|| <= rtol ||rhs|| or after max_iter products; returns (x, number of products).
    Every iterate lowers the quadratic 1/2 x^T A x - rhs^T x, so an early stop still gives a descent step.
    """
    x, r = torch.zeros_like(rhs), rhs.clone()
    p, rr = r.clone(), float((r * r).sum())
    stop, n = rtol * rtol * rr, 0
    while rr > stop and n < max_iter:
        Ap = matvec(p)
        n += 1
        pAp = float((p * Ap).sum())
        if pAp <= 0:  # not positive definite along p (round-off): keep what we have
            break
        a = rr / pAp
        x, r = x + a * p, r - a * Ap
        rr, rr_old = float((r * r).sum()), rr
        p = r + (rr / rr_old) * p
    return x, n
