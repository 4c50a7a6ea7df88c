"""`attrnet predict MODEL SRC --ray --out FILE`: labelling large folders on a Ray cluster with Ray Data
(pip install 'attrnet[ray]').

The image files are listed once; Ray Data streams their paths through a pool of actors (one per worker, as many
as the cluster's CPUs allow, `workers` at most), each of which loads the model once and reads, decodes and
predicts a batch of files at a time. The driver receives each batch's rows as it is done and writes it at once
as a part file (FILE.parts/, atomically), so a run that is stopped part-way, by Ctrl-C, a lost node or a killed
process, keeps what it finished: the same command again predicts only the files no part holds. At the end the
parts become FILE (CSV, JSON or Parquet, with the same columns and order as `attrnet predict`) and the parts
folder is removed. Unreadable files are reported with their reason, as without Ray.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attrnet import atomic
from attrnet.errors import AttrnetError
from attrnet.inference import load_model
from attrnet.predict import csv_header, csv_row, json_document, json_row

log = logging.getLogger(__name__)
OUTPUT_SUFFIXES = (".csv", ".json", ".parquet")


def require_ray_data():
    try:
        import ray  # optional: the ray extra
        import ray.data  # noqa: F401
    except ImportError:
        raise AttrnetError("predict --ray needs Ray Data: pip install 'attrnet[ray]'") from None
    return ray


def check_ray_output(out: str | Path | None) -> Path:
    if out is None:
        raise AttrnetError("predict --ray writes its rows to a file: give --out FILE.csv, .json or .parquet")
    out = Path(out)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise AttrnetError(f"--out must end in {', '.join(OUTPUT_SUFFIXES)}, got {out}")
    return out


class _Labeller:
    """A Ray Data actor: the model, loaded once per worker; each call reads, decodes and predicts a batch of
    paths. Returns the rows as columns: path, probabilities [n, M], error ('' where the file was read)."""

    def __init__(self, source: str, tta: str | None, precision: str):
        self.model = load_model(source, "cpu", tta, precision=precision)

    def __call__(self, batch: dict) -> dict:
        paths = [str(p) for p in batch["path"]]
        result = self.model.predict(paths)
        errors = [""] * len(paths)
        for i, why in result.failed:
            errors[i] = why
        return {"path": np.asarray(paths, dtype=object), "probabilities": result.probabilities.astype(np.float32),
                "error": np.asarray(errors, dtype=object)}


@dataclass
class RayOutcome:
    predicted: int = 0          # files predicted by this call (not those finished before)
    resumed: int = 0            # files an earlier, stopped call had finished
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    rows: int = 0


def parts_folder(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def finished_paths(parts: Path) -> set[str]:
    """The files the part files already hold (a part that cannot be read counts for nothing: redone)."""
    done: set[str] = set()
    for part in sorted(parts.glob("part-*.npz")):
        try:
            with np.load(part, allow_pickle=False) as z:
                done.update(z["path"].tolist())
        except (OSError, ValueError, KeyError):
            log.warning("ignoring unreadable part %s: its files are predicted again", part)
    return done


def predict_folder_on_ray(source: str, paths: list[Path], out: str | Path, names: list[str], thresholds: np.ndarray,
                          address: str | None = None, workers: int = 0, batch_size: int = 64, tta: str | None = None,
                          precision: str = "auto", stop_after: int | None = None) -> RayOutcome:
    """Predict `paths` with `source` on Ray Data into `out` (see the module doc). stop_after: leave after that many
    batches were written, as a stopped run would (tests)."""
    ray = require_ray_data()
    out = check_ray_output(out)
    parts = parts_folder(out)
    parts.mkdir(parents=True, exist_ok=True)
    done = finished_paths(parts)
    todo = [str(p) for p in paths if str(p) not in done]
    outcome = RayOutcome(resumed=len(paths) - len(todo))
    if todo:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # attrnet's own lines say what happened; Ray's would fill a log
        context.print_on_execution_start = False
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        pool = min(workers or cpus, cpus, max(1, -(-len(todo) // batch_size)))
        ds = ray.data.from_items([{"path": p} for p in todo]).map_batches(
            _Labeller, fn_constructor_args=(source, tta, precision), batch_size=batch_size, concurrency=pool,
            num_cpus=1, batch_format="numpy")
        start = len(list(parts.glob("part-*.npz")))
        batches = ds.iter_batches(batch_size=None, batch_format="numpy")
        try:
            for k, batch in enumerate(batches):
                _write_part(parts / f"part-{start + k:06d}.npz", batch)
                outcome.predicted += len(batch["path"])
                if stop_after is not None and k + 1 >= stop_after:
                    return outcome
        finally:
            getattr(batches, "close", lambda: None)()  # a stop part-way releases the workers at once
    outcome.unreadable, outcome.rows = _merge(parts, paths, out, names, thresholds)
    shutil.rmtree(parts, ignore_errors=True)
    return outcome


def _write_part(path: Path, batch: dict) -> None:
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # np.savez would add .npz to a temporary name
            np.savez(fh, path=np.asarray(batch["path"], dtype=str), probabilities=np.asarray(batch["probabilities"]),
                     error=np.asarray(batch["error"], dtype=str))


def _merge(parts: Path, paths: list[Path], out: Path, names: list[str], thresholds: np.ndarray):
    """The part files' rows in the input order, written as `out` (atomically); returns (unreadable, rows)."""
    rows: dict[str, tuple[np.ndarray, str]] = {}
    for part in sorted(parts.glob("part-*.npz")):
        with np.load(part, allow_pickle=False) as z:
            for p, probs, err in zip(z["path"].tolist(), z["probabilities"], z["error"].tolist()):
                rows[p] = (probs, err)
    order = [str(p) for p in paths if str(p) in rows]
    good = [p for p in order if not rows[p][1]]
    unreadable = [(p, rows[p][1]) for p in order if rows[p][1]]
    if not good:
        raise AttrnetError(f"none of the {len(paths)} image(s) could be read: {unreadable[0][1] if unreadable else ''}")
    probs = np.stack([rows[p][0] for p in good]).astype(np.float64)
    decisions = (probs >= thresholds).astype(np.int64)
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa  # Ray Data's own dependency
        import pyarrow.parquet as pq
        columns = {"image": good, **{f"{a}_prob": probs[:, j] for j, a in enumerate(names)},
                   **{a: decisions[:, j] for j, a in enumerate(names)}}
        with atomic.atomic_path(out) as tmp:
            pq.write_table(pa.table(columns), tmp)
    elif suffix == ".csv":  # the columns and number format of attrnet predict
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(csv_header(names))
        writer.writerows(csv_row(p, pr, dec) for p, pr, dec in zip(good, probs, decisions))
        atomic.write_text(out, buf.getvalue())
    else:
        rows = [json_row(p, names, pr, dec) for p, pr, dec in zip(good, probs, decisions)]
        atomic.write_text(out, json_document(names, thresholds, rows, unreadable))
    return unreadable, len(good)
