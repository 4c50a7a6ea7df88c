"""Multi-task attribute classifiers W = L S with group-sparse S (Abdulnabi et al., TMM 2015)."""

from attrnet.mtl.prox import fista, group_lasso_penalty, group_soft_threshold, soft_threshold
from attrnet.mtl.solver import (
                                MTLProblem,
                                MTLResult,
                                decision_function,
                                fit_independent,
                                fit_mtl,
                                objective,
                                smooth_L,
                                smooth_S,
                                solve_L,
                                solve_S,
)

__all__ = ["MTLProblem", "MTLResult", "decision_function", "fista", "fit_independent", "fit_mtl",
           "group_lasso_penalty", "group_soft_threshold", "objective", "smooth_L", "smooth_S",
           "soft_threshold", "solve_L", "solve_S"]
