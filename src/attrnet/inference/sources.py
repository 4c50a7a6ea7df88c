"""Where a trained model can come from, read into (network, ModelInfo): a run folder, a checkpoint file, an
exported Hugging Face-style folder (config.json + model.safetensors), or a Hub repo id of such a folder."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch.nn as nn
from safetensors.torch import load_model

from attrnet.config import config_from_dict
from attrnet.errors import AttrnetError
from attrnet.inference.checkpoint import checkpoint_config, load_checkpoint, network_from_checkpoint
from attrnet.models.factory import KIND_LATENT_TASK, create_network
from attrnet.preprocessing import Preprocessing

HUB_CONFIG = "config.json"
HUB_WEIGHTS = "model.safetensors"
HUB_FORMAT = 1
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class ModelInfo:
    """Everything about a trained model besides its weights: what it predicts and how it reads an image."""

    kind: str
    attributes: list[str]
    thresholds: np.ndarray
    preprocessing: Preprocessing   # how it reads an image (size, colour, resize, normalisation, TTA, input kind)
    config: dict                   # the run's resolved config
    groups: dict | None = None
    metrics: dict | None = None    # the run's test metrics (metrics.json), when known
    source: str = ""
    latent: dict = field(default_factory=dict)  # latent_task only: {"features": "shared" | "per_attribute"}
    trained_on: dict | None = None  # {"dataset", "description", "made_by"} (engine.checkpoint.trained_on)

    # the preprocessing facts every reader of an image asks for
    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocessing.image_size

    @property
    def grayscale(self) -> bool:
        return self.preprocessing.grayscale

    @property
    def resize(self) -> str:
        return self.preprocessing.resize

    @property
    def normalization(self) -> dict:
        return self.preprocessing.normalization

    @property
    def tta(self) -> str:
        """The model's own test-time augmentation (model.tta of its run)."""
        return self.preprocessing.tta

    def to_json(self) -> dict:
        """The JSON form written into exported folders and ONNX sidecars (and read back by from_json)."""
        return {"library_name": "attrnet", "attrnet_format": HUB_FORMAT, "kind": self.kind,
                "attributes": list(self.attributes), "thresholds": [float(t) for t in self.thresholds],
                "groups": self.groups, "tta": self.tta, "latent": self.latent,
                "preprocessing": self.preprocessing.to_json(), "config": self.config, "metrics": self.metrics,
                "trained_on": self.trained_on}

    @classmethod
    def from_json(cls, obj: dict, source: str) -> "ModelInfo":
        try:
            return cls(kind=obj["kind"], attributes=list(obj["attributes"]),
                       thresholds=np.asarray(obj["thresholds"], dtype=np.float64),
                       preprocessing=Preprocessing.from_json(obj["preprocessing"], obj.get("tta", "none")),
                       config=obj["config"], groups=obj.get("groups"), metrics=obj.get("metrics"), source=source,
                       latent=obj.get("latent") or {}, trained_on=obj.get("trained_on"))
        except (KeyError, TypeError, ValueError) as exc:
            raise AttrnetError(f"{source}: not an attrnet model description (missing or bad {exc})") from None


def read_info(source: str | Path) -> ModelInfo:
    """The description of a model without its weights: a run folder, a checkpoint, an exported folder, a .onnx."""
    path = Path(source)
    if path.suffix == ".onnx" or (path.is_dir() and (path / "model.onnx").is_file()
                                  and not (path / HUB_CONFIG).is_file()):
        onnx = path if path.suffix == ".onnx" else path / "model.onnx"
        return ModelInfo.from_json(_read_json(onnx.with_suffix(".json")), str(onnx))
    if path.is_dir() and (path / HUB_CONFIG).is_file():
        return ModelInfo.from_json(_read_json(path / HUB_CONFIG), str(path))
    return info_from_checkpoint(load_checkpoint(path))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AttrnetError(f"{path}: not readable JSON ({exc})") from None


def read_model(source: str | Path) -> tuple[nn.Module, ModelInfo]:
    """The network (eval mode, on the CPU) and its description, from any of the places a model can be."""
    path = Path(source)
    if path.is_dir() and (path / HUB_CONFIG).is_file():
        return read_hub_folder(path)
    if path.exists():
        return read_checkpoint(path)
    if isinstance(source, str) and _REPO_ID.match(source):
        return read_hub_folder(download_hub_repo(source))
    raise AttrnetError(f"model not found: {source} (give a run folder, a checkpoint .pt, an exported folder "
                       f"or a Hugging Face Hub repo id such as user/attrnet-celeba)")


def read_checkpoint(path: str | Path) -> tuple[nn.Module, ModelInfo]:
    ckpt = load_checkpoint(path)
    net = network_from_checkpoint(ckpt)
    return net, info_from_checkpoint(ckpt)


def info_from_checkpoint(ckpt: dict) -> ModelInfo:
    cfg = checkpoint_config(ckpt)
    names = list(ckpt["attributes"])
    path = Path(ckpt["path"])
    run_dir = path.parent if ckpt["kind"] == KIND_LATENT_TASK else path.parent.parent
    return ModelInfo(kind=ckpt["kind"], attributes=names,
                     thresholds=np.asarray(ckpt.get("thresholds") or [0.5] * len(names), dtype=np.float64),
                     preprocessing=Preprocessing.from_checkpoint(ckpt, ckpt.get("config") or {}),
                     config=cfg.to_dict(), groups=ckpt.get("groups"),
                     metrics=_run_metrics(run_dir), source=str(path),
                     latent={"features": ckpt.get("features", "shared")} if ckpt["kind"] == KIND_LATENT_TASK else {},
                     trained_on=ckpt.get("trained_on"))


def _run_metrics(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_hub_folder(folder: Path) -> tuple[nn.Module, ModelInfo]:
    """An exported folder: config.json (what and how) + model.safetensors (weights only, no pickle)."""
    try:
        obj = json.loads((folder / HUB_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AttrnetError(f"{folder / HUB_CONFIG}: not readable JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("library_name") != "attrnet":
        raise AttrnetError(f"{folder}: its config.json is not an attrnet model's (library_name is not attrnet)")
    info = ModelInfo.from_json(obj, str(folder))
    net = _empty_network(info, folder / HUB_WEIGHTS)
    _load_safetensors(net, folder / HUB_WEIGHTS)
    return net.eval(), info


def _empty_network(info: ModelInfo, weights: Path) -> nn.Module:
    """The architecture info describes (models.factory), its weights to be loaded from `weights`."""
    cfg = config_from_dict(info.config, f"{weights.parent / HUB_CONFIG} (config)")
    return create_network(info.kind, cfg.model, len(info.attributes), info.preprocessing.channels,
                          info.latent.get("features", "shared"))


def _load_safetensors(net: nn.Module, path: Path) -> None:
    try:
        missing, unexpected = load_model(net, str(path), strict=False)
    except Exception as exc:  # noqa: BLE001 - shape mismatches and format errors alike
        raise AttrnetError(f"{path}: the weights do not fit the network config.json describes ({exc})") from None
    if missing or unexpected:
        raise AttrnetError(f"{path}: the weights do not fit the network config.json describes "
                           f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")


def download_hub_repo(repo_id: str) -> Path:
    """A Hub repo's files in the local Hugging Face cache (downloaded once when online; offline, found in the
    cache or an error that says so)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise AttrnetError(f"{repo_id} is not a local path, and reading a model from the Hugging Face Hub needs "
                           f"huggingface_hub (pip install 'attrnet[hub]')") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=[HUB_CONFIG, HUB_WEIGHTS, "README.md"]))
    except Exception as exc:  # noqa: BLE001 - network, auth and not-found errors of the hub client
        raise AttrnetError(f"cannot get {repo_id} from the Hugging Face Hub ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
