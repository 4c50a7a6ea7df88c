"""solvers.convex_min as one GPU kernel (Triton): the whole pairwise Frank-Wolfe loop in one program, with
the Gram matrix in registers. The loop in PyTorch launches some 40 small kernels per iteration (4,000 per
step at 100 iterations), which on a GPU would cost more than the network's own backward pass; this is one
launch. Same arithmetic as solvers.convex_min (tests compare them), used for CUDA tensors when Triton is
installed and M <= MAX_TASKS."""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

MAX_TASKS = 128


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def convex_min_kernel(G_ptr, p_ptr, c_ptr, present_ptr, out_ptr, M, iters, eps,
                          BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        inb = i < M
        G = tl.load(G_ptr + i[:, None] * M + i[None, :], mask=inb[:, None] & inb[None, :], other=0.0)
        p = tl.load(p_ptr + i, mask=inb, other=0.0)
        c = tl.load(c_ptr)
        pres = (tl.load(present_ptr + i, mask=inb, other=0) != 0) & inb
        n = tl.sum(pres.to(tl.float64), axis=0)
        a = tl.where(pres, 1.0 / tl.maximum(n, 1.0), 0.0).to(tl.float64)
        diag = tl.sum(tl.where(i[:, None] == i[None, :], G, 0.0), axis=1)
        for _ in range(iters):
            Ga = tl.sum(G * a[None, :], axis=1)
            q0 = tl.sum(a * Ga, axis=0) + eps
            grad = p + c * Ga / tl.sqrt(q0)
            t = tl.argmin(tl.where(pres, grad, float("inf")), axis=0)
            s = tl.argmax(tl.where(pres & (a > 0), grad, float("-inf")), axis=0)
            et = i == t
            es = i == s
            a1 = tl.sum(tl.where(et, p, 0.0), axis=0) - tl.sum(tl.where(es, p, 0.0), axis=0)
            q1 = tl.sum(tl.where(et, Ga, 0.0), axis=0) - tl.sum(tl.where(es, Ga, 0.0), axis=0)
            row_t = tl.sum(tl.where(et[:, None], G, 0.0), axis=0)
            q2 = (tl.sum(tl.where(et, diag, 0.0), axis=0) + tl.sum(tl.where(es, diag, 0.0), axis=0)
                  - 2 * tl.sum(tl.where(es, row_t, 0.0), axis=0))
            top = tl.sum(tl.where(es, a, 0.0), axis=0)
            # the exact minimiser along the segment (solvers._segment_min)
            r = -a1 / tl.maximum(c, 1e-30)
            interior = (q2 > r * r) & (q2 > 1e-30)
            D = tl.maximum(q0 * q2 - q1 * q1, 0.0)
            sv = r * tl.sqrt(D / tl.where(interior, q2 - r * r, 1.0))
            g_in = (sv - q1) / tl.where(interior, q2, 1.0)
            g_end = tl.where(a1 < 0, top, 0.0)
            step = tl.maximum(tl.minimum(tl.where(interior, tl.maximum(g_in, 0.0), g_end), top), 0.0)
            a = tl.maximum(a + step * (et.to(tl.float64) - es.to(tl.float64)), 0.0)
        tl.store(out_ptr + i, a, mask=inb)

    return convex_min_kernel


def available(gram: torch.Tensor) -> bool:
    """Whether convex_min can run as the fused kernel on this tensor: a CUDA tensor, at most MAX_TASKS tasks,
    and a kernel that compiled and ran on its device (tried once per device; Triton needs a C compiler)."""
    return gram.is_cuda and gram.shape[0] <= MAX_TASKS and _works(gram.device)


@functools.lru_cache(maxsize=None)
def _works(device: torch.device) -> bool:
    try:
        import triton  # noqa: F401
        G = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64, device=device)
        one = torch.ones((), dtype=torch.float64, device=device)
        a = convex_min_fused(G, torch.zeros(2, dtype=torch.float64, device=device), one,
                             torch.ones(2, dtype=torch.bool, device=device), 10, 1e-12)
        ok = bool(torch.allclose(a.cpu(), torch.tensor([0.8, 0.2], dtype=torch.float64)))  # once: a sync
    except Exception as exc:  # no Triton, no compiler, an unsupported GPU: the PyTorch loop does the same
        log.warning("the fused min-norm solver is not available (%s: %s); using the PyTorch loop",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False
    if not ok:
        log.warning("the fused min-norm solver gave a wrong answer on %s; using the PyTorch loop", device)
    return ok


def convex_min_fused(gram: torch.Tensor, linear: torch.Tensor, c: torch.Tensor, present: torch.Tensor,
                     iters: int, eps: float) -> torch.Tensor:
    import triton
    m = gram.shape[0]
    G = gram.double().contiguous()
    out = torch.empty(m, dtype=torch.float64, device=G.device)
    block = max(16, triton.next_power_of_2(m))
    _kernel()[(1,)](G, linear.double().contiguous(), c.reshape(1).double(), present.to(torch.int8).contiguous(),
                    out, m, int(iters), float(eps), BLOCK=block)
    return out
