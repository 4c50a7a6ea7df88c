"""The paper's whole pipeline from one config: data -> CNN features -> latent-task MTL -> evaluation.

run_mtl(cfg, run_dir) prepares the data (the core's prepare_data), gets CNN features (attrnet.paper.features:
one shared CNN or M single-attribute CNNs), standardises them on the training rows, fits W = L S with the
alternating solver (attrnet.mtl.solver.fit_mtl), chooses thresholds, evaluates on the test split and writes,
atomically, into the run folder:

  config.yaml, metrics.json ("mean_accuracy", "groups", "baselines", "timings", "solver", ...),
  mtl_model.pt (L, S, b, attributes, groups, feature normalisation, backbone checkpoint path),
  objective_history.csv, plots/latent_S.png, plots/attribute_sharing.png, plots/attribute_accuracy.png,
  features.pt (the cached features), cnn/ or feature_cnns.pt (the CNN(s) the features came from).

The baselines are evaluated exactly like the MTL model (same features, same standardisation, same threshold
rule): independent per-attribute squared-hinge classifiers (solver.fit_independent) and, with shared
features, the shared CNN's own heads.

fit_and_evaluate() is the part after the features; benchmarks/clothing_mtl.py calls it once per split.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from attrnet import atomic, metrics, model_file
from attrnet.config import Config
from attrnet.data.groups import group_index, validate_groups
from attrnet.device import resolve_device
from attrnet.engine.evaluate import evaluation_report
from attrnet.engine.run_folder import check_run_folder, start_run_folder
from attrnet.engine.setup import PreparedData, prepare_data
from attrnet.errors import AttrnetError
from attrnet.inference.checkpoint import CHECKPOINT_VERSION
from attrnet.models.backbones import weights_normalization
from attrnet.models.factory import KIND_LATENT_TASK
from attrnet.mtl.solver import MTLProblem, MTLResult, decision_function, fit_independent, fit_mtl
from attrnet.paper.features import FeatureSet, compute_features
from attrnet.preprocessing import Preprocessing
from attrnet.report import plots
from attrnet.report.jsonable import to_jsonable

log = logging.getLogger(__name__)

THRESHOLD_MODES = ("zero", "tuned")
GRID_KEYS = ("mu", "gamma", "lam", "latent_tasks")


# ---------------------------------------------------------------- pieces

def standardize(features: np.ndarray, train_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z-score with the training rows' statistics: features [N, D] or [M, N, D] -> (Z, mean, std).

    std is floored at 1e-6 so constant features stay zero instead of blowing up.
    """
    rows = features[..., train_idx, :]
    mean = rows.mean(axis=-2, keepdims=True)
    std = np.maximum(rows.std(axis=-2, keepdims=True), 1e-6)
    return ((features - mean) / std).astype(np.float32), mean.squeeze(-2), std.squeeze(-2)


def principal_directions(Z: np.ndarray, train_idx: np.ndarray, k: int) -> np.ndarray:
    """[D, k] the top-k principal directions of the training rows of standardised features Z [N, D] (orthonormal
    columns; signs made deterministic: each column's largest entry positive)."""
    rows = Z[train_idx].astype(np.float64)
    rows = rows - rows.mean(0)
    _, _, vt = np.linalg.svd(rows, full_matrices=False)
    P = vt[:k].T
    P *= np.sign(P[np.argmax(np.abs(P), axis=0), np.arange(P.shape[1])])
    return P


def balance_weights(labels: np.ndarray) -> np.ndarray:
    """[N, M] example weights so each attribute's positives and negatives weigh half each (0 where unknown).

    c = n_known / (2 n_pos) on positives and n_known / (2 n_neg) on negatives (scikit-learn's "balanced");
    a column with one class only keeps weight 1.
    """
    labels = np.asarray(labels, dtype=float)
    known = ~np.isnan(labels)
    n = known.sum(0).astype(float)
    pos = np.nansum(labels, axis=0)
    neg = n - pos
    w_pos = np.where(pos > 0, n / np.maximum(2 * pos, 1), 1.0)
    w_neg = np.where(neg > 0, n / np.maximum(2 * neg, 1), 1.0)
    one_class = (pos == 0) | (neg == 0)
    w_pos, w_neg = np.where(one_class, 1.0, w_pos), np.where(one_class, 1.0, w_neg)
    w = np.where(labels == 1, w_pos, w_neg)
    return np.where(known, w, 0.0)


def resolve_mtl_groups(groups: dict | None, names: list[str]) -> tuple[dict | None, list[list[int]] | None]:
    """The run's attribute groups validated against its attributes, and their column indices (or None)."""
    if not groups:
        return None, None
    checked = validate_groups(groups, names)
    return checked, group_index(checked, names)


def latent_tasks(cfg_value: int, num_attributes: int) -> int:
    return int(cfg_value) if cfg_value else min(num_attributes, 16)


def _rows(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return X[..., idx, :]


def sigmoid(s: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(s, -60, 60)))


def choose_thresholds(val_scores: np.ndarray | None, val_labels: np.ndarray | None, mode: str,
                      metric: str = "accuracy") -> np.ndarray:
    """Probability thresholds on sigmoid(score): 0.5 (score >= 0) or tuned on val."""
    if mode not in THRESHOLD_MODES:
        raise AttrnetError(f"unknown mtl.thresholds {mode!r}; valid: {', '.join(THRESHOLD_MODES)}")
    m = val_labels.shape[1] if val_labels is not None else (val_scores.shape[1] if val_scores is not None else 0)
    if mode == "zero" or val_scores is None or len(val_scores) == 0:
        return np.full(m, 0.5)
    return metrics.tune_thresholds(sigmoid(val_scores), val_labels, metric)


def _grid(cfg: Config) -> list[dict]:
    """Every combination of cfg.mtl.grid (missing keys: the config's own value)."""
    base = {"mu": cfg.mtl.mu, "gamma": cfg.mtl.gamma, "lam": cfg.mtl.lam, "latent_tasks": cfg.mtl.latent_tasks}
    grid = cfg.mtl.grid or {}
    if not isinstance(grid, dict):
        raise AttrnetError("mtl.grid must be a mapping like {mu: [0.1, 1], lam: [0.1, 1]}")
    unknown = [k for k in grid if k not in GRID_KEYS + ("baseline_lam",)]
    if unknown:
        raise AttrnetError(f"mtl.grid: unknown key {unknown[0]!r}; valid: {', '.join(GRID_KEYS + ('baseline_lam',))}")
    axes = {k: (list(grid[k]) if isinstance(grid.get(k), (list, tuple)) else [grid.get(k, base[k])])
            for k in GRID_KEYS}
    return [dict(zip(GRID_KEYS, combo)) for combo in itertools.product(*(axes[k] for k in GRID_KEYS))]


def _baseline_lams(cfg: Config) -> list[float]:
    grid = cfg.mtl.grid or {}
    if "baseline_lam" in grid:
        v = grid["baseline_lam"]
        return [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    if cfg.mtl.baseline_lam is not None:
        return [float(cfg.mtl.baseline_lam)]
    if "lam" in grid:  # the MTL's ridge grid, when the baseline has none of its own
        v = grid["lam"]
        return [float(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
    return [float(cfg.mtl.lam)]


def _val_accuracy(scores: np.ndarray, labels: np.ndarray, names: list[str], mode: str, metric: str) -> float:
    thr = choose_thresholds(scores, labels, mode, metric)
    return float(metrics.attribute_metrics(sigmoid(scores), labels, names, thr)["mean_accuracy"])


# ---------------------------------------------------------------- fit and evaluate on given features

@dataclass
class Outcome:
    """Everything fit_and_evaluate produced: the MTL's test report, the baselines', the fitted model."""

    result: dict
    baselines: dict
    solver: MTLResult
    independent: tuple[torch.Tensor, torch.Tensor]
    thresholds: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    groups: dict | None
    hyper: dict
    timings: dict = field(default_factory=dict)
    search: list = field(default_factory=list)
    # per method ("mtl", "independent", "shared_heads"): (scores of the evaluated rows [n, M], the thresholds on
    # sigmoid(score) it was scored at); the rows are `split`'s, in the table's order
    scores: dict = field(default_factory=dict)
    # [D, k] when the solver worked on the top k principal components (mtl.pca): a classifier w there is
    # projection @ w on the standardised features
    projection: np.ndarray | None = None

    def on_features(self, W: torch.Tensor) -> torch.Tensor:
        """A classifier matrix of the solver's space as one of the standardised features' space."""
        if self.projection is None:
            return W
        return torch.as_tensor(self.projection, dtype=W.dtype, device=W.device) @ W


@contextlib.contextmanager
def solver_threads(n: int, device: torch.device):
    """torch's intra-op threads set to n while the solver runs on the CPU (restored afterwards)."""
    if n <= 0 or device.type != "cpu":
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def fit_and_evaluate(cfg: Config, data: PreparedData, feats: FeatureSet, device: torch.device | None = None,
                     groups: dict | None = None) -> Outcome:
    """Standardise, fit the MTL model (hyper-parameters picked on val when cfg.mtl.grid is set) and the
    independent baseline on the training rows, choose thresholds, evaluate everything on the test rows."""
    device = device or resolve_device(cfg.train.device)
    with solver_threads(cfg.mtl.solver_threads, device):
        return _fit_and_evaluate(cfg, data, feats, device, groups)


def _fit_and_evaluate(cfg: Config, data: PreparedData, feats: FeatureSet, device: torch.device,
                      groups: dict | None) -> Outcome:
    names = list(data.table.names)
    groups, gidx = resolve_mtl_groups(groups if groups is not None else data.groups, names)
    train_idx, val_idx, test_idx = (data.indices(s) for s in ("train", "val", "test"))
    if len(train_idx) == 0:
        raise AttrnetError(f"{data.table.source}: the training split is empty")
    eval_idx, split = (test_idx, "test") if len(test_idx) else (val_idx, "val")
    if len(eval_idx) == 0:
        raise AttrnetError(f"{data.table.source}: no test or validation rows to evaluate on")
    mode, metric = cfg.mtl.thresholds, cfg.train.threshold_metric
    if mode not in THRESHOLD_MODES:
        raise AttrnetError(f"unknown mtl.thresholds {mode!r}; valid: {', '.join(THRESHOLD_MODES)}")
    labels = data.table.labels
    X = feats.features
    if cfg.mtl.standardize:
        X, mean, std = standardize(X, train_idx)
    else:
        mean = np.zeros(X.shape[:-2] + X.shape[-1:], np.float32)
        std = np.ones_like(mean)
    projection = None
    if cfg.mtl.pca:  # the solver's cost grows with the feature size: solve on the top principal components
        if X.ndim != 2:
            raise AttrnetError("mtl.pca works on shared features (mtl.features: shared)")
        projection = principal_directions(X, train_idx, min(cfg.mtl.pca, X.shape[1]))
        X = (X @ projection).astype(np.float32)
    dtype = torch.float64
    to_t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa: E731
    y_train = labels[train_idx]
    weights = balance_weights(y_train) if cfg.mtl.balance else None
    problem = MTLProblem(to_t(_rows(X, train_idx)), to_t(y_train),
                         None if weights is None else to_t(weights), groups=gidx)
    X_val, X_eval = to_t(_rows(X, val_idx)), to_t(_rows(X, eval_idx))
    y_val, y_eval = labels[val_idx], labels[eval_idx]
    has_val = len(val_idx) > 0
    timings: dict[str, float] = {}

    def mtl_scores(res: MTLResult, Xs: torch.Tensor) -> np.ndarray:
        return decision_function(Xs, res.L, res.S, res.b).cpu().numpy()

    # --- the MTL model (grid on val when asked)
    t0 = time.perf_counter()
    candidates = _grid(cfg)
    if len(candidates) > 1 and not has_val:
        raise AttrnetError("mtl.grid needs a validation split to choose on (data.val_fraction > 0)")
    search, best, best_acc = [], None, -np.inf
    M = len(names)
    for hp in candidates:
        K = latent_tasks(hp["latent_tasks"], M)
        res = solve_mtl(problem, cfg, K, float(hp["mu"]), float(hp["gamma"]), float(hp["lam"]))
        acc = _val_accuracy(mtl_scores(res, X_val), y_val, names, mode, metric) if has_val else float("nan")
        search.append({**hp, "K": K, "val_mean_accuracy": acc, "objective": res.history[-1],
                       "n_outer": res.n_outer, **solver_status(res)})
        if len(candidates) > 1:
            log.info("mtl grid %s: val mean accuracy %.4f", hp, acc)
        if best is None or acc > best_acc:
            best, best_acc, chosen = res, acc, {**hp, "K": K}
    assert best is not None
    timings["solver"] = time.perf_counter() - t0

    # --- the independent baseline (its own ridge weight picked on val the same way)
    t0 = time.perf_counter()
    ind_best, ind_acc, ind_lam = None, -np.inf, None
    lams = _baseline_lams(cfg)
    for lam in lams:
        W, b = fit_independent(problem, lam, cfg.mtl.fit_bias, max_iter=10 * cfg.mtl.inner_max_iter,
                               tol=cfg.mtl.inner_tol)
        acc = _val_accuracy(_scores(X_val, W, b), y_val, names, mode, metric) if has_val else float("nan")
        if ind_best is None or acc > ind_acc:
            ind_best, ind_acc, ind_lam = (W, b), acc, lam
        if len(lams) > 1:
            log.info("independent lam=%g: val mean accuracy %.4f", lam, acc)
    assert ind_best is not None
    timings["baseline"] = time.perf_counter() - t0

    # --- thresholds and evaluation
    t0 = time.perf_counter()

    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def evaluate(method: str, val_s: np.ndarray | None, eval_s: np.ndarray) -> tuple[dict, np.ndarray]:
        thr = choose_thresholds(val_s if has_val else None, y_val if has_val else None, mode, metric)
        if len(thr) != M:
            thr = np.full(M, 0.5)
        rep = evaluation_report(sigmoid(eval_s), y_eval, names, thr, groups)
        rep["split"] = split
        scores[method] = (eval_s, thr)
        return rep, thr

    result, thresholds = evaluate("mtl", mtl_scores(best, X_val), mtl_scores(best, X_eval))
    W_ind, b_ind = ind_best
    independent, _ = evaluate("independent", _scores(X_val, W_ind, b_ind), _scores(X_eval, W_ind, b_ind))
    independent["lam"] = ind_lam
    baselines = {"independent": independent}
    if feats.logits is not None:
        heads, _ = evaluate("shared_heads", feats.logits[val_idx].astype(np.float64),
                            feats.logits[eval_idx].astype(np.float64))
        baselines["shared_heads"] = heads
    timings["evaluation"] = time.perf_counter() - t0
    hyper = {**chosen, "val_mean_accuracy": best_acc, "baseline_lam": ind_lam, "baseline_val_mean_accuracy": ind_acc}
    return Outcome(result, baselines, best, ind_best, thresholds, mean, std, groups, hyper, timings, search,
                   scores, projection)


def solve_mtl(problem: MTLProblem, cfg: Config, K: int, mu: float, gamma: float, lam: float) -> MTLResult:
    """fit_mtl with the run's solver settings (cfg.mtl, the seed); says so in the log when it did not converge."""
    res = fit_mtl(problem, K, mu, gamma, lam, max_outer=cfg.mtl.max_outer, tol=cfg.mtl.tol, fit_bias=cfg.mtl.fit_bias,
                  seed=cfg.train.seed, inner_max_iter=cfg.mtl.inner_max_iter, inner_tol=cfg.mtl.inner_tol)
    status = solver_status(res)
    (log.info if res.converged else log.warning)(
        "mtl solver K=%d mu=%g gamma=%g lam=%g: %s after %d outer iterations (last relative change %.2e, "
        "estimated remaining %.2e, mtl.tol %g)", K, mu, gamma, lam,
        "converged" if res.converged else "NOT converged (raise mtl.max_outer)", res.n_outer,
        status["rel_change"], status["remaining"], cfg.mtl.tol)
    return res


def solver_status(res: MTLResult) -> dict:
    """Whether the solve converged, the last outer iteration's relative change of F and the estimated remaining one."""
    return {"converged": res.converged, "rel_change": res.rel_change, "remaining": res.remaining}


def _scores(Xs: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Scores of linear classifiers W [D, M], b [M] on [n, D] or [M, n, D] features."""
    eye = torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
    return decision_function(Xs, W, eye, b).cpu().numpy()


# ---------------------------------------------------------------- outputs

def write_history(path: Path, history: list[float]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["outer_iteration", "objective"])
    for i, f in enumerate(history):
        w.writerow([i, repr(float(f))])
    atomic.write_text(path, buf.getvalue())


def write_plots(outcome: Outcome, names: list[str], plot_dir: Path) -> dict[str, str]:
    """S as a heatmap (latent tasks x attributes, columns by group) and the cosine similarity of w_m = L s^m."""
    S = outcome.solver.S.detach().cpu().numpy()
    W = outcome.on_features(outcome.solver.L @ outcome.solver.S).detach().cpu().numpy()
    groups = outcome.groups
    paths = {
        "latent_S": plots.plot_heatmap(S, [f"task {k + 1}" for k in range(S.shape[0])], names,
                                        plot_dir / "latent_S.png", col_groups=groups, symmetric=True,
                                        title="S: how each attribute combines the latent tasks"),
        "attribute_sharing": plots.plot_heatmap(plots.cosine_similarity_matrix(W), names, names,
                                                 plot_dir / "attribute_sharing.png", col_groups=groups,
                                                 symmetric=True,
                                                 title="sharing: cosine similarity of w_m = L s^m"),
        "attribute_accuracy": plots.plot_attribute_accuracy(
            outcome.result, plot_dir / "attribute_accuracy.png",
            title=f"MTL, {outcome.result['split']} split, mean accuracy {outcome.result['mean_accuracy']:.3f}"),
    }
    return {k: str(v) for k, v in paths.items()}


def run_mtl(cfg: Config, run_dir: str | Path, progress: bool = True, data: PreparedData | None = None,
            resume: bool = False, overwrite: bool = False) -> dict:
    """The whole pipeline from one config into run_dir; returns the MTL's test metrics (plus baselines etc.).

    An existing run in run_dir is an error unless resume (same config; cached features are reused) or
    overwrite (replace its outputs; cached features are still reused when they were made the same way)."""
    run_dir = Path(run_dir)
    check_run_folder(run_dir, cfg, resume, overwrite)
    device = resolve_device(cfg.train.device)
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    data = data or prepare_data(cfg, progress=progress)
    t_data = time.perf_counter() - t0
    names = list(data.table.names)
    resolve_mtl_groups(data.groups, names)  # fail before training anything when the groups are wrong
    start_run_folder(run_dir, cfg, overwrite=overwrite)

    t0 = time.perf_counter()
    feats = compute_features(cfg, data, run_dir, device, progress)
    t_feat = time.perf_counter() - t0

    outcome = fit_and_evaluate(cfg, data, feats, device)
    t0 = time.perf_counter()
    plots = write_plots(outcome, names, run_dir / "plots")
    write_history(run_dir / "objective_history.csv", outcome.solver.history)
    # L on the standardised features (with mtl.pca: the projection folded in), so that W = L S predicts
    L, S, b = (t.detach().cpu().float() for t in (outcome.on_features(outcome.solver.L), outcome.solver.S,
                                                  outcome.solver.b))
    model_file.save_file(run_dir / "mtl_model.pt", {
        "kind": KIND_LATENT_TASK, "version": CHECKPOINT_VERSION,
        "L": L, "S": S, "b": b, "attributes": names, "groups": outcome.groups,
        "feature_mean": torch.from_numpy(np.asarray(outcome.mean, np.float32)),
        "feature_std": torch.from_numpy(np.asarray(outcome.std, np.float32)),
        "standardize": cfg.mtl.standardize, "features": feats.mode, "backbone_checkpoint": feats.checkpoint,
        "thresholds": outcome.thresholds.tolist(), "hyper": outcome.hyper, "config": cfg.to_dict(),
        "independent_W": outcome.on_features(outcome.independent[0]).detach().cpu().float(),
        "independent_b": outcome.independent[1].detach().cpu().float(),
        # the CNNs' input: as they were trained, with their weights' normalisation
        "preprocessing": Preprocessing.from_config(cfg.data, cfg.model, weights_normalization(
            cfg.model.backbone, cfg.model.pretrained)).to_dict()})
    t_write = time.perf_counter() - t0

    timings = {"data": t_data, "features": t_feat, **outcome.timings, "outputs": t_write}
    timings["total"] = time.perf_counter() - t_start
    res = outcome.solver
    result = dict(outcome.result)
    result.update(
        baselines=outcome.baselines,
        timings={k: round(v, 3) for k, v in timings.items()},
        solver={"K": outcome.hyper["K"], "mu": outcome.hyper["mu"], "gamma": outcome.hyper["gamma"],
                "lam": outcome.hyper["lam"], "n_outer": res.n_outer, **solver_status(res),
                "objective": res.history[-1], "objective_initial": res.history[0],
                "times": {k: round(v, 3) for k, v in res.times.items()},
                "zero_rows_S": int((res.S.abs().sum(1) == 0).sum()),
                "zero_fraction_L": float((res.L == 0).double().mean()),
                "balance": cfg.mtl.balance, "standardize": cfg.mtl.standardize, "thresholds": cfg.mtl.thresholds},
        features={"mode": feats.mode, "dim": feats.dim, "checkpoint": feats.checkpoint, "cached": feats.cached,
                  **{k: v for k, v in feats.info.items() if k != "history"}},
        hyper_search=outcome.search, plots=plots, attribute_groups=outcome.groups)
    atomic.write_json(run_dir / "metrics.json", to_jsonable(result))
    log.info("MTL mean accuracy %.4f (independent %.4f%s) on %s", result["mean_accuracy"],
             outcome.baselines["independent"]["mean_accuracy"],
             f", shared heads {outcome.baselines['shared_heads']['mean_accuracy']:.4f}"
             if "shared_heads" in outcome.baselines else "", result["split"])
    return result
