"""Small solvers on the Gram matrix G [M, M] of per-task gradients: pure tensor functions, a fixed number of
iterations, no host syncs (nothing branches on a tensor's value), so they run where G is.

`present` [M] (bool) marks the tasks that take part; the others get weight 0 (their rows and columns of G
are zero anyway: no known label, no gradient).
"""

from __future__ import annotations

import torch

from attrnet.weighting import fused


def normalized_gram(gram: torch.Tensor) -> torch.Tensor:
    """G divided by its mean diagonal: the solvers' answers do not depend on G's scale, and the small
    constants they add stay negligible whatever the scale of the gradients."""
    return gram / gram.diagonal().mean().clamp_min(1e-30)


def convex_min(gram: torch.Tensor, linear: torch.Tensor, c: torch.Tensor | float, present: torch.Tensor,
               iters: int = 100, eps: float = 1e-8) -> torch.Tensor:
    """argmin over the simplex of the present tasks of  a^T linear + c sqrt(a^T G a + eps).

    MGDA's min-norm point is linear = 0, c = 1; CAGrad's inner problem is linear = G 1/M, c = alpha |g0|.
    Pairwise Frank-Wolfe (the Mitchell-Demyanov-Malozemov step of min-norm solvers): each iteration moves
    weight from the support task with the largest partial derivative to the present task with the smallest,
    by the exact minimiser of the convex objective along that segment (closed form below). Starts uniform.
    On a GPU the loop runs as one fused kernel (weighting.fused) when Triton is there.
    """
    G = gram.double()
    p = linear.double()
    # torch.full, not torch.tensor: a tensor made from a Python number on a GPU is a blocking copy (a sync)
    c = c.double() if isinstance(c, torch.Tensor) else torch.full((), float(c), dtype=torch.float64, device=G.device)
    if fused.available(G):
        return fused.convex_min_fused(G, p, c, present, iters, eps)
    return _convex_min_loop(G, p, c, present, iters, eps)


def _convex_min_loop(G: torch.Tensor, p: torch.Tensor, c: torch.Tensor, present: torch.Tensor, iters: int,
                     eps: float) -> torch.Tensor:
    m = G.shape[0]
    eye = torch.eye(m, dtype=torch.float64, device=G.device)
    a = present.double() / present.double().sum().clamp_min(1)
    inf = torch.full((), float("inf"), dtype=torch.float64, device=G.device)
    for _ in range(iters):
        Ga = G @ a
        q0 = a @ Ga + eps
        grad = p + c * Ga / q0.sqrt()
        t = torch.where(present, grad, inf).argmin()                 # toward this task
        s = torch.where(present & (a > 0), grad, -inf).argmax()      # away from this one
        # entries t and s by index_select: indexing with a 0-dim tensor would read the index back (a host sync)
        ts = torch.stack([t, s])
        e_t, e_s = eye.index_select(0, ts)
        p_t, p_s = p.index_select(0, ts)
        Ga_t, Ga_s = Ga.index_select(0, ts)
        (G_tt, G_ts), (_, G_ss) = G.index_select(0, ts).index_select(1, ts)
        a1 = p_t - p_s
        q1 = Ga_t - Ga_s
        q2 = G_tt + G_ss - 2 * G_ts
        step = _segment_min(a1, c, q0, q1, q2, a.index_select(0, s.view(1))[0])
        a = (a + step * (e_t - e_s)).clamp_min(0)
    return a


def _segment_min(a1, c, q0, q1, q2, top):
    """argmin over g in [0, top] of a1 g + c sqrt(q0 + 2 q1 g + q2 g^2) (convex in g).

    Where the derivative vanishes, s = q1 + q2 g satisfies s sqrt(q2) / sqrt(D + s^2) = r with r = -a1 / c and
    D = q0 q2 - q1^2 (>= 0), so s = r sqrt(D / (q2 - r^2)) when q2 > r^2; otherwise the derivative keeps
    a1's sign and the minimum is at an end."""
    r = -a1 / c.clamp_min(1e-30)
    interior = (q2 > r * r) & (q2 > 1e-30)
    D = (q0 * q2 - q1 * q1).clamp_min(0)
    s = r * torch.sqrt(D / torch.where(interior, q2 - r * r, 1.0))
    g_inner = (s - q1) / torch.where(interior, q2, 1.0)
    g_end = torch.where(a1 < 0, top, torch.zeros_like(top))
    return torch.where(interior, g_inner.clamp(min=0), g_end).clamp(max=top).clamp_min(0)


def pcgrad_coefficients(gram: torch.Tensor, order: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """PCGrad (Yu et al., NeurIPS 2020) in the span of the gradients: C [M, M] with projected gradient
    i = sum_k C[i, k] g_k. Task i's gradient is projected, in the order order[i] (a permutation of all
    tasks, itself included, as in the reference code), off every g_j it conflicts with:
    if pc_i . g_j < 0: pc_i -= (pc_i . g_j) / (|g_j|^2 + eps) g_j. The M tasks run side by side."""
    G = gram.double()
    m = G.shape[0]
    C = torch.eye(m, dtype=torch.float64, device=G.device)
    rows = torch.arange(m, device=G.device)
    for k in range(m):
        j = order[:, k]
        dots = (C * G[j]).sum(1)                     # pc_i . g_j for each i
        C[rows, j] -= dots.clamp(max=0) / (G[j, j] + eps)
    return C


def imtl_g_weights(gram: torch.Tensor, present: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """IMTL-G (Liu et al., ICLR 2021): the a with sum a = 1 for which g = sum a_i g_i has the same projection
    on every unit gradient u_i = g_i / |g_i|. The paper's closed form takes task 1 as reference,
    a_{2:} = g_1 U^T (D U^T)^-1 with rows D_i = g_1 - g_i, U_i = u_1 - u_i; here the same linear system,
    in Gram terms, with the first present task as reference and a_j = 0 for the others."""
    G = gram.double()
    m = G.shape[0]
    norms = G.diagonal().clamp_min(0).sqrt().clamp_min(eps)
    ref = present.to(torch.int64).argmax().view(1)    # first present task (index_select: no host sync)
    idx = torch.arange(m, device=G.device)
    # rows j: (u_ref - u_j) . g_i = G[ref, i] / n_ref - G[j, i] / n_j  (equal projections on u_ref and u_j)
    A = G.index_select(0, ref) / norms.index_select(0, ref) - G / norms[:, None]
    A = torch.where((idx == ref)[:, None], present.double()[None, :], A)     # sum of the weights ...
    b = (idx == ref).double()                                                 # ... is 1
    eye = torch.eye(m, dtype=torch.float64, device=G.device)
    A = torch.where(present[:, None], A, eye)                                 # absent tasks: a_j = 0
    a, _ = torch.linalg.solve_ex(A, b)   # _ex: no error check, so no host sync
    return torch.where(present, a, 0.0)
