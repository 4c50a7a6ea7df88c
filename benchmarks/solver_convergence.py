"""Convergence of the paper's alternating solver (attrnet.mtl.solver.fit_mtl), before and after a change.

On one fixed, seeded 6-attribute instance (CNN-like correlated features) it prints:
  1. one L-step solved tightly (prox-gradient mapping <= 1e-10) from the initial point: FISTA iterations,
     conjugate-gradient Hessian products, seconds;
  2. the whole alternating solve with given solver settings: outer iterations, inner iterations, seconds,
     relative gap to a tightly converged solve of the same problem, zero blocks of S;
for the solver in this checkout ("after") and the one at git revision --before ("before"), which is loaded
from git into a temporary package. --larger adds a 12-attribute instance (N=600, D=128, K=8) with the config's
penalties (mu=1, gamma=0.01, lam=0.1) and the shipped configs' (mu=100, gamma=0.01, lam=100).

    python benchmarks/solver_convergence.py [--before REV] [--repeat 3] [--larger]

Seconds are the best of --repeat runs, one torch thread.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from attrnet.mtl import MTLProblem
from attrnet.mtl.prox import group_norms

REPO = Path(__file__).resolve().parents[1]
F64 = torch.float64
K, MU, GAMMA, LAM = 4, 10.0, 1.0, 0.1
OLD_DEFAULTS = dict(max_outer=30, tol=1e-5, inner_max_iter=100, inner_tol=1e-6)  # MTLConfig before the change
NEW_DEFAULTS = dict(max_outer=500, tol=1e-6, inner_max_iter=100, inner_tol=1e-10)  # recommended MTLConfig values
TIGHT = dict(max_outer=5000, tol=1e-13, inner_max_iter=20000, inner_tol=1e-14)
L_TIGHT = dict(max_iter=50000, tol=0.0, grad_tol=1e-10)


def six_attribute_problem(seed: int = 0, n: int = 300, d: int = 64) -> MTLProblem:
    """6 attributes in 2 groups of 3, each group driven by 2 sparse latent tasks; features with a decaying
    spectrum (condition number of X^T X ~120, as penultimate CNN features are correlated), standardised.
    The same instance as six_attribute_problem in tests/test_mtl_solver.py."""
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


def larger_problem(seed: int = 0, n: int = 600, d: int = 128, m: int = 12) -> MTLProblem:
    """12 attributes in 3 groups of 4 from a rank-6 W, correlated standardised features, 20% labels unknown."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    X = torch.randn(n, d, generator=g, dtype=F64) @ ((torch.arange(1, d + 1, dtype=F64) ** -0.5)[:, None] * Q.T)
    X = (X - X.mean(0)) / X.std(0)
    s = X @ (torch.randn(d, 6, generator=g, dtype=F64) @ torch.randn(6, m, generator=g, dtype=F64))
    Y = torch.sign(s / s.std(0) + 0.5 * torch.randn(n, m, generator=g, dtype=F64))
    Y[torch.rand(n, m, generator=g) < 0.2] = float("nan")
    return MTLProblem(X, Y, groups=[list(range(4 * j, 4 * j + 4)) for j in range(m // 4)])


def load_before(rev: str, tmp: Path):
    """attrnet.mtl.prox and .solver as of git revision `rev`, importable as the package attrnet_before."""
    pkg = tmp / "attrnet_before"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("prox", "solver"):
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:src/attrnet/mtl/{name}.py"], check=True,
                             capture_output=True, text=True).stdout
        (pkg / f"{name}.py").write_text(src.replace("from attrnet.mtl.prox import", "from attrnet_before.prox import"))
    sys.path.insert(0, str(tmp))
    return importlib.import_module("attrnet_before.solver")


@contextlib.contextmanager
def counting(solver, **L_options):
    """Count the inner iterations of fit_mtl by wrapping the module's solve_S and solve_L (given L_options)."""
    counts = {"S": 0, "L": 0, "cg": 0}
    solve_S, solve_L = solver.solve_S, solver.solve_L

    def S_step(*a, **kw):
        out = solve_S(*a, **kw)
        counts["S"] += out[2]["n_iter"]
        return out

    def L_step(*a, **kw):
        out = solve_L(*a, **kw, **L_options)
        counts["L"] += out[1]["n_iter"]
        counts["cg"] += out[1].get("n_cg", 0)
        return out

    solver.solve_S, solver.solve_L = S_step, L_step
    try:
        yield counts
    finally:
        solver.solve_S, solver.solve_L = solve_S, solve_L


def best_time(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def l_step(solver, problem: MTLProblem, repeat: int) -> str:
    L0, S0, b0 = solver._init(problem, K, LAM, "independent", 0, True, 100)
    S, b, _ = solver.solve_S(problem, L0, S0, b0, MU, True, **L_TIGHT)
    (_, info), sec = best_time(lambda: solver.solve_L(problem, S, L0, b, GAMMA, LAM, **L_TIGHT), repeat)
    return (f"{info['n_iter']:6d} FISTA iterations + {info.get('n_cg', 0):4d} CG products, {sec:6.3f} s, "
            f"F = {info['objective']:.12g}, converged {info['converged']}")


def whole(solver, problem: MTLProblem, settings: dict, repeat: int, ref=None, hyper=(K, MU, GAMMA, LAM),
          **L_options) -> tuple[object, str]:
    with counting(solver, **L_options) as counts:
        res, sec = best_time(lambda: solver.fit_mtl(problem, *hyper, **settings), repeat)
    zero = group_norms(res.S, problem.gid) == 0
    line = (f"{res.n_outer:4d} outer, {counts['S'] // repeat:6d} S + {counts['L'] // repeat:6d} L FISTA iterations "
            f"+ {counts['cg'] // repeat:5d} CG, {sec:6.2f} s, F = {res.history[-1]:.10g}, converged {res.converged}, "
            f"{int(zero.sum())} zero blocks of S")
    if ref is not None:
        F_ref = ref.history[-1]
        same = "same as" if torch.equal(zero, group_norms(ref.S, problem.gid) == 0) else "NOT the same as"
        line += f" ({same} the tight solve's), relative gap {(res.history[-1] - F_ref) / F_ref:.1e}"
    return res, line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="382db6d", help="git revision of the solver to compare with")
    ap.add_argument("--repeat", type=int, default=3, help="runs per timing (the best is shown)")
    ap.add_argument("--larger", action="store_true", help="also the 12-attribute instance (a few minutes)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import attrnet.mtl.solver as after

    problem = six_attribute_problem()
    with tempfile.TemporaryDirectory() as tmp:
        before = load_before(args.before, Path(tmp))
        print(f"6-attribute instance: N={problem.shape[0]} D={problem.shape[1]} M={problem.shape[2]}, K={K} "
              f"mu={MU} gamma={GAMMA} lam={LAM}; before = git {args.before}, after = this checkout\n")
        print("1. one L-step from the initial point to a prox-gradient mapping <= 1e-10")
        print(f"   before: {l_step(before, problem, args.repeat)}")
        print(f"   after:  {l_step(after, problem, args.repeat)}\n")
        print("2. the whole alternating solve")
        ref, line = whole(after, problem, TIGHT, 1)
        print(f"   after, tight {TIGHT}:\n      {line}")
        _, line = whole(before, problem, TIGHT, 1, ref)
        print(f"   before, tight (same settings):\n      {line}")
        _, line = whole(before, problem, OLD_DEFAULTS, args.repeat, ref)
        print(f"   before, old defaults {OLD_DEFAULTS}:\n      {line}")
        _, line = whole(after, problem, OLD_DEFAULTS, args.repeat, ref)
        print(f"   after, old defaults:\n      {line}")
        _, line = whole(after, problem, NEW_DEFAULTS, args.repeat, ref)
        print(f"   after, new defaults {NEW_DEFAULTS}:\n      {line}")
        _, line = whole(after, problem, {**NEW_DEFAULTS, "extrapolate": False}, args.repeat, ref)
        print(f"   after, new defaults without the outer extrapolation:\n      {line}")
        _, line = whole(after, problem, NEW_DEFAULTS, args.repeat, ref, newton=False)
        print(f"   after, new defaults without the L-step's Newton polish:\n      {line}")
        if args.larger:
            larger(before, after)


def larger(before, after) -> None:
    problem = larger_problem()
    n, d, m = problem.shape
    print(f"\n3. 12-attribute instance: N={n} D={d} M={m}, K=8, one run each")
    for mu, lam in ((100.0, 100.0), (1.0, 0.1)):
        hyper = (8, mu, 0.01, lam)
        print(f"   mu={mu} gamma=0.01 lam={lam}")
        ref = None
        if mu == 100.0:  # with the weak penalties even 3,000 outer iterations do not converge: no reference
            ref, line = whole(after, problem, TIGHT, 1, hyper=hyper)
            print(f"   after, tight:\n      {line}")
        for name, solver, settings in (("before, old defaults", before, OLD_DEFAULTS),
                                       ("after, new defaults", after, NEW_DEFAULTS)):
            _, line = whole(solver, problem, settings, 1, ref, hyper=hyper)
            print(f"   {name}:\n      {line}")


if __name__ == "__main__":
    main()
