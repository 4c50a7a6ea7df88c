"""A run folder is never clobbered: an existing run is continued (--resume) or replaced (--overwrite), only
when asked, and only after the new config has been validated and its data read.

check_run_folder runs before anything is written; start_run_folder, when training is about to begin, clears
the old run's outputs (with --overwrite) and writes the resolved config.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from attrnet import atomic
from attrnet.config import PATH_KEYS, Config
from attrnet.errors import AttrnetError

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
# What a run writes (and --overwrite removes). Caches that are checked by key before reuse are kept:
# the MTL pipeline's features.pt, feature_cnns.pt and the cnn/ sub-run they came from.
OUTPUTS = ("config.yaml", "checkpoints/best.pt", "checkpoints/last.pt", "metrics.csv", "metrics.json",
           "mtl_model.pt", "objective_history.csv", "MODEL_CARD.md")
# Keys a resumed run may change: where and how fast it runs, and more epochs. Anything else (image size,
# attributes, learning rate...) would silently make the continued run a different experiment.
RESUMABLE = {("train", "epochs"), ("train", "device"), ("train", "log_every"), ("train", "compile"),
             ("train", "precision"), ("train", "channels_last"),  # stored resolved (fp32/bf16, true/false)
             ("data", "workers"), ("data", "cache_dir"), ("data", "cache_on_device")}


def check_run_folder(run_dir: str | Path, cfg: Config, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse, with what to do, any start that would change an existing run without being asked to."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise AttrnetError("--resume and --overwrite contradict each other: continue the run, or replace it")
    if run_dir.exists() and not run_dir.is_dir():
        raise AttrnetError(f"run folder {run_dir} is a file")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    holds_run = (run_dir / CONFIG_FILE).is_file()
    if resume:
        if not holds_run:
            raise AttrnetError(f"--resume: {run_dir} holds no run ({CONFIG_FILE} missing); leave out --resume "
                               f"to start one in a new folder")
        _check_resumable(run_dir, cfg)
        return
    if overwrite:
        return
    what = "an attrnet run" if holds_run else "files that are not an attrnet run"
    raise AttrnetError(f"run folder {run_dir} already holds {what}; add --resume to continue it, --overwrite "
                       f"to replace it, or choose another --out")


def _check_resumable(run_dir: Path, cfg: Config) -> None:
    try:
        stored = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise AttrnetError(f"--resume: cannot read {run_dir / CONFIG_FILE} ({type(exc).__name__})") from None
    if not isinstance(stored, dict):
        raise AttrnetError(f"--resume: {run_dir / CONFIG_FILE} is not a run config")
    changes = config_changes(stored, cfg.to_dict())
    refused = [c for c in changes if (c[0], c[1]) not in RESUMABLE]
    fewer = [c for c in changes if (c[0], c[1]) == ("train", "epochs") and _less(c[3], c[2])]
    if refused or fewer:
        what = "; ".join(f"{s}.{k} was {old!r} in this run, now {new!r}" for s, k, old, new in (refused or fewer)[:4])
        more = f" (and {len(refused) - 4} more)" if len(refused) > 4 else ""
        allowed = ", ".join(sorted(f"{a}.{b}" for a, b in RESUMABLE - {("train", "epochs")}))
        raise AttrnetError(f"--resume: {what}{more}. A resumed run may only add epochs or change {allowed}; "
                           f"start a new run (another --out) or --overwrite this one")


def _less(new, old) -> bool:
    return isinstance(new, (int, float)) and isinstance(old, (int, float)) and new < old


def config_changes(stored: dict, current: dict) -> list[tuple[str, str, object, object]]:
    """(section, key, stored value, current value) for every key that differs; paths compared resolved."""
    out = []
    for section, values in current.items():
        old_section = stored.get(section) or {}
        for key, new in values.items():
            old = old_section.get(key, new) if isinstance(old_section, dict) else None
            if (section, key) in PATH_KEYS and isinstance(old, str) and isinstance(new, str):
                same = Path(old).expanduser().resolve() == Path(new).expanduser().resolve()
            else:
                same = old == new
            if not same:
                out.append((section, key, old, new))
    return out


def start_run_folder(run_dir: str | Path, cfg: Config, overwrite: bool = False) -> None:
    """Just before training: clear the replaced run's outputs (--overwrite), remove temporary files of killed
    writers, write the resolved config."""
    run_dir = Path(run_dir)
    if overwrite:
        for name in OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)
        for png in (run_dir / "plots").glob("*.png"):
            png.unlink()
    for folder in (run_dir, run_dir / "checkpoints"):
        for stale in atomic.remove_stale_temps(folder):
            log.info("removed %s, left by a killed write", stale)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "plots").mkdir(exist_ok=True)
    atomic.write_text(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
