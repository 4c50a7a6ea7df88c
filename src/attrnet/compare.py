"""`attrnet compare`: one training per (method, seed) on the same data, then one table.

A method is a loss weighting (attrnet.weighting: ew, uw, dwa, rlw, famo, mgda, pcgrad, cagrad, imtl_g) or
"latent", the paper's latent-task head (model.head: latent) trained with equal weighting. Every run reads
the same decoded-image cache and the same split (prepared once); run (method, seed) lives in
OUT/<method>/seed<seed>, a normal run folder. A run whose metrics.json exists is finished and skipped; one
stopped part-way is resumed from its last checkpoint; a folder holding a run of another config is an error.

The table (OUT/comparison.csv, OUT/comparison.md) has, per method, the mean and standard deviation over seeds
of the test split's mean accuracy, balanced accuracy, F1 and average precision; Delta m %, the mean relative
change against equal weighting over every attribute and those four metrics (Maninis et al. 2019; each run
against the mean over ew's seeds; pairs where ew's value is 0 or undefined are left out); the mean rank of the method over the same (attribute, metric) pairs
(seed means, 1 = best); and the median training time of an epoch relative to equal weighting's. The plot
(OUT/comparison.png) shows the mean accuracy and Delta m per method.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from pathlib import Path

import numpy as np

from attrnet import atomic
from attrnet.config import Config
from attrnet.config_rules import WEIGHTINGS
from attrnet.engine.run_folder import check_run_folder
from attrnet.engine.setup import prepare_data
from attrnet.engine.train import fit
from attrnet.errors import AttrnetError
from attrnet.progress import progress_bar
from attrnet.report.plots import pyplot, save_figure

log = logging.getLogger(__name__)

LATENT = "latent"
METRICS = ("accuracy", "balanced_accuracy", "f1", "average_precision")
BASELINE = "ew"


def parse_methods(text: str) -> list[str]:
    """'ew,uw,latent' -> ['ew', 'uw', 'latent']; unknown or repeated names are errors."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    valid = (*WEIGHTINGS, LATENT)
    for m in methods:
        if m not in valid:
            raise AttrnetError(f"--methods: unknown method {m!r}; valid: {', '.join(valid)}")
    if len(set(methods)) != len(methods) or not methods:
        raise AttrnetError(f"--methods must name each method once, got {text!r}")
    return methods


def parse_seeds(text: str, option: str = "--seeds") -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise AttrnetError(f"{option} must be whole numbers separated by commas, such as 0,1,2; got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise AttrnetError(f"{option} must be distinct non-negative whole numbers, got {text!r}")
    return seeds


def run_config(cfg: Config, method: str, seed: int) -> Config:
    """The config of one run: the method (a weighting, or the latent-task head with ew) and the seed."""
    train = dataclasses.replace(cfg.train, seed=seed, weighting=BASELINE if method == LATENT else method)
    model = dataclasses.replace(cfg.model, head="latent" if method == LATENT else cfg.model.head)
    return dataclasses.replace(cfg, train=train, model=model)


def run_folder(out: Path, method: str, seed: int) -> Path:
    return out / method / f"seed{seed}"


def run_comparison(cfg: Config, methods: list[str], seeds: list[int], out: str | Path,
                   progress: bool = True) -> dict:
    """Train what is missing, then write the table and the plot; returns {"rows": [...], "paths": {...}}."""
    if cfg.mtl.enabled:
        raise AttrnetError("compare trains the core model; set mtl.enabled=false")
    out = Path(out)
    runs = [(m, s) for m in methods for s in seeds]
    todo = []
    for m, s in runs:  # every folder checked before anything trains
        folder = run_folder(out, m, s)
        check_run_folder(folder, run_config(cfg, m, s), resume=folder.is_dir() and any(folder.iterdir()))
        if not _finished(folder, cfg.train.epochs):
            todo.append((m, s))
    if todo:
        data = prepare_data(cfg, progress=progress)  # one cache and one split for every run
        bar = progress_bar(runs, desc="compare", unit="run", disable=not progress)
        for m, s in bar:
            bar.set_postfix_str(f"{m} seed {s}")
            if (m, s) in todo:
                folder = run_folder(out, m, s)
                fit(run_config(cfg, m, s), folder, resume=folder.is_dir(), progress=False, data=data)
        bar.close()
    rows = comparison_table({(m, s): read_run(run_folder(out, m, s)) for m, s in runs}, methods, seeds)
    paths = write_comparison(rows, out)
    return {"rows": rows, "paths": paths, "trained": len(todo), "skipped": len(runs) - len(todo)}


def _finished(folder: Path, epochs: int) -> bool:
    """metrics.json written after all `epochs` (a finished run given more epochs is resumed)."""
    try:
        return json.loads((folder / "metrics.json").read_text(encoding="utf-8")).get("epochs") == epochs
    except (OSError, ValueError, AttributeError):
        return False


def read_run(folder: Path) -> dict:
    """A finished run's test metrics and its epochs' training times (seconds)."""
    try:
        result = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        with open(folder / "metrics.csv", newline="", encoding="utf-8") as fh:
            seconds = [float(row["seconds"]) for row in csv.DictReader(fh)]
    except (OSError, ValueError, KeyError) as exc:
        raise AttrnetError(f"{folder}: cannot read the run's metrics.json / metrics.csv ({exc})") from None
    return {"metrics": result, "epoch_seconds": float(np.median(seconds)) if seconds else float("nan")}


def comparison_table(results: dict[tuple[str, int], dict], methods: list[str], seeds: list[int]) -> list[dict]:
    """One row per method from the runs' results {(method, seed): read_run(...)}."""
    names = list(next(iter(results.values()))["metrics"]["attributes"])
    # per run: [attributes x metrics]
    per_run = {k: np.array([[_num(r["metrics"]["attributes"][a].get(key)) for key in METRICS] for a in names])
               for k, r in results.items()}
    seed_mean = {m: np.nanmean([per_run[(m, s)] for s in seeds], axis=0) for m in methods}
    base = seed_mean.get(BASELINE)
    base_seconds = (np.nanmean([results[(BASELINE, s)]["epoch_seconds"] for s in seeds])
                    if BASELINE in methods else float("nan"))
    ranks = _mean_ranks(seed_mean, methods)
    rows = []
    for m in methods:
        row: dict = {"method": m, "seeds": len(seeds)}
        for key in METRICS:
            values = [_num(results[(m, s)]["metrics"].get(f"mean_{key}")) for s in seeds]
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
        if base is not None:
            deltas = [_delta_m(per_run[(m, s)], base) for s in seeds]
            row["delta_m_mean"], row["delta_m_std"] = _mean_std(deltas)
        else:
            row["delta_m_mean"] = row["delta_m_std"] = float("nan")
        row["mean_rank"] = ranks[m]
        seconds = np.nanmean([results[(m, s)]["epoch_seconds"] for s in seeds])
        row["epoch_time_vs_ew"] = float(seconds / base_seconds) if base_seconds > 0 else float("nan")
        rows.append(row)
    return rows


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    if np.isnan(a).all():
        return float("nan"), float("nan")
    # one seed has no spread: NaN (the table then shows the mean alone, not "± 0.0000")
    return float(np.nanmean(a)), float(np.nanstd(a, ddof=1)) if np.sum(~np.isnan(a)) > 1 else float("nan")


def _delta_m(run: np.ndarray, base: np.ndarray) -> float:
    """100 x the mean over (attribute, metric) of (run - base) / base; all four metrics: higher is better."""
    ok = ~np.isnan(run) & ~np.isnan(base) & (base != 0)
    return float(100 * np.mean((run[ok] - base[ok]) / base[ok])) if ok.any() else float("nan")


def _mean_ranks(seed_mean: dict[str, np.ndarray], methods: list[str]) -> dict[str, float]:
    """Rank the methods on each (attribute, metric) by seed mean (1 = best, ties share the mean rank);
    a method's mean rank is the mean over the pairs every method has a value for."""
    from scipy.stats import rankdata
    stack = np.stack([seed_mean[m] for m in methods]).reshape(len(methods), -1)   # [methods, pairs]
    ok = ~np.isnan(stack).any(axis=0)
    if not ok.any():
        return {m: float("nan") for m in methods}
    ranks = rankdata(-stack[:, ok], axis=0)
    return {m: float(ranks[i].mean()) for i, m in enumerate(methods)}


COLUMNS = (["method", "seeds"] + [f"{k}_{s}" for k in METRICS for s in ("mean", "std")]
           + ["delta_m_mean", "delta_m_std", "mean_rank", "epoch_time_vs_ew"])


def write_comparison(rows: list[dict], out: Path) -> dict[str, Path]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    paths = {"csv": out / "comparison.csv", "markdown": out / "comparison.md", "plot": out / "comparison.png"}
    atomic.write_text(paths["csv"], buf.getvalue())
    atomic.write_text(paths["markdown"], format_markdown(rows))
    plot_comparison(rows, paths["plot"])
    return paths


def format_markdown(rows: list[dict]) -> str:
    head = ["method", "seeds", "accuracy", "balanced acc.", "F1", "AP", "Δm %", "mean rank", "epoch time vs ew"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        cells = [r["method"], str(r["seeds"])]
        cells += [_pm(r[f"{k}_mean"], r[f"{k}_std"], 4) for k in METRICS]
        cells += [_pm(r["delta_m_mean"], r["delta_m_std"], 2, signed=True), _f(r["mean_rank"], 2),
                  _f(r["epoch_time_vs_ew"], 2) + "x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _f(x: float, digits: int, signed: bool = False) -> str:
    if x is None or np.isnan(x):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _pm(mean: float, std: float, digits: int, signed: bool = False) -> str:
    """mean ± sd; the mean alone where there is no spread (one seed)."""
    if np.isnan(mean):
        return "n/a"
    return _f(mean, digits, signed) if np.isnan(std) else f"{_f(mean, digits, signed)} ± {_f(std, digits)}"


def plot_comparison(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    names = [r["method"] for r in rows]
    x = np.arange(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(rows) + 4), 4))
    ax1.bar(x, [r["accuracy_mean"] for r in rows], yerr=[r["accuracy_std"] for r in rows], capsize=3,
            color="#4C72B0")
    accs = [r["accuracy_mean"] for r in rows if not np.isnan(r["accuracy_mean"])]
    if accs:
        spread = max(accs) - min(accs)
        ax1.set_ylim(max(0.0, min(accs) - max(0.02, spread)), min(1.0, max(accs) + max(0.02, spread)))
    ax1.set_title("test mean accuracy (± std over seeds)")
    deltas = [r["delta_m_mean"] for r in rows]
    ax2.bar(x, np.nan_to_num(deltas), yerr=np.nan_to_num([r["delta_m_std"] for r in rows]), capsize=3,
            color=["#55A868" if d >= 0 else "#C44E52" for d in np.nan_to_num(deltas)])
    ax2.axhline(0, color="black", linewidth=0.8)
    ax2.set_title(f"Δm % against {BASELINE}")
    for ax in (ax1, ax2):
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right")
    fig.tight_layout()
    return save_figure(fig, path)  # closes the figure
