"""Exporting a trained model for other runtimes and for sharing.

ONNX: one graph, uint8 images [N, C, H, W] (N dynamic) -> probabilities [N, M], normalisation and the asked-for
test-time augmentation inside, with a JSON sidecar (attributes, thresholds, size, colour mode, resize).
Hub folder: the Hugging Face layout, config.json + model.safetensors (weights only) + README.md, which
attrnet.inference reads back offline (or from the Hub by repo id).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from attrnet import atomic
from attrnet.errors import AttrnetError
from attrnet.inference.model import AttributeModel
from attrnet.inference.sources import HUB_CONFIG, HUB_WEIGHTS
from attrnet.inference.tta import check_tta

log = logging.getLogger(__name__)
ONNX_OPSET = 18
ONNX_TTA = ("none", "flip")  # flip_shift's replicate-padded moves are left to the PyTorch runtime


def sidecar_path(onnx_path: str | Path) -> Path:
    """model.onnx -> model.json: where the description of an exported graph lives."""
    return Path(onnx_path).with_suffix(".json")


def export_onnx(model: AttributeModel, out: str | Path, tta: str = "none", overwrite: bool = False) -> Path:
    """Write out (.onnx) and its JSON sidecar; returns the .onnx path. Existing ones are replaced only with
    overwrite."""
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise AttrnetError(f"--out for --format onnx must end in .onnx, got {out}")
    check_export_target(out, "onnx", overwrite)
    if check_tta(tta) not in ONNX_TTA:
        raise AttrnetError(f"--tta {tta} cannot be baked into an ONNX graph; use one of {', '.join(ONNX_TTA)}")
    _require("onnx", "onnxscript")
    graph = model.probability_graph(tta)
    h, w = model.info.image_size
    # an example batch of 5: a size that no other dimension of the input has (the tracer gives equal sizes
    # one symbol, and the channels and image sides are fixed); _check_dynamic_batch verifies the result
    example = torch.randint(0, 256, (5, 1 if model.info.grayscale else 3, h, w), dtype=torch.uint8)
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        _trace(graph, example, tmp_file)
        with atomic.atomic_path(out) as final:
            shutil.copyfile(tmp_file, final)
    info = model.info.to_json()
    info.update(tta=tta, onnx={"input": "images", "output": "probabilities", "opset": ONNX_OPSET})
    atomic.write_json(sidecar_path(out), info)
    return out


def _trace(graph: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        # the exporter prints its progress to standard output, which is the CLI's and bench's result channel
        with contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(graph, (example,), dynamo=True, input_names=["images"],
                                        output_names=["probabilities"], dynamic_shapes=({0: batch},),
                                        opset_version=ONNX_OPSET, external_data=False, verbose=False)
            program.save(str(path))
    except Exception as exc:  # noqa: BLE001 - the exporter's many error types: one line for the user
        raise AttrnetError(f"ONNX export failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})") from None
    _check_dynamic_batch(path)


def _check_dynamic_batch(path: Path) -> None:
    """The tracer may fix a dimension it should not (it gives equal sizes one symbol): refuse such a graph."""
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    if not dim.dim_param:
        raise AttrnetError(f"ONNX export fixed the batch size to {dim.dim_value}; please report this")


def check_export_target(out: str | Path, fmt: str, overwrite: bool = False) -> None:
    """One rule for every export: an existing output (the .onnx or its sidecar; a folder that is not empty) is
    replaced only with overwrite, and never half-way."""
    out = Path(out)
    taken = [p for p in ((out, sidecar_path(out)) if fmt == "onnx" else (out,))
             if p.exists() and not (p.is_dir() and not any(p.iterdir()))]
    if taken and not overwrite:
        raise AttrnetError(f"--out {taken[0]} exists; add --overwrite to replace it")


def export_hub(model: AttributeModel, out: str | Path, card: str | None = None, overwrite: bool = False) -> Path:
    """Write the Hugging Face layout into folder out (created; an existing one must be empty unless overwrite,
    which replaces it whole). Files get the usual permissions (0644 and a 0755 folder under a 022 umask), so
    another user or a container can read the model."""
    from safetensors.torch import save_model

    out = Path(out)
    check_export_target(out, "hub", overwrite)
    if out.exists() and not out.is_dir():
        raise AttrnetError(f"--out {out} is a file, not a folder")
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        net = model.net.to("cpu").to(memory_format=torch.contiguous_format)
        save_model(net, str(staging / HUB_WEIGHTS))
        info = model.info.to_json()
        info.update(tta=model.tta)
        (staging / HUB_CONFIG).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(card or default_card(model), encoding="utf-8")
        for f in staging.iterdir():  # mkdtemp's 0700 and safetensors' 0600 would keep the model to one user
            f.chmod(0o666 & ~atomic.umask())
        staging.chmod(0o777 & ~atomic.umask())
        out.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if out.exists():  # an empty folder, or the export being replaced: moved aside, gone after the rename
            old = out.with_name(f".{out.name}.replaced.{os.getpid()}")
            out.rename(old)
        staging.rename(out)  # the folder appears complete, or not at all
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


def default_card(model: AttributeModel) -> str:
    """A short README for the folder when no model card is given: what it predicts and its test figures."""
    info = model.info
    lines = ["---", "library_name: attrnet", "tags: [image-classification, multi-label, attributes]", "---", "",
             f"# attrnet model: {len(info.attributes)} binary attributes", "",
             f"Input: {'grey' if info.grayscale else 'RGB'} images resized ({info.resize}) to "
             f"{info.image_size[0]}x{info.image_size[1]}.", "",
             "```python", "from attrnet.inference import load_model",
             "model = load_model(\"THIS_FOLDER_OR_REPO_ID\")", "model.predict([\"photo.jpg\"]).probabilities", "```",
             ""]
    metrics = info.metrics or {}
    if "mean_accuracy" in metrics:
        lines += [f"Test mean accuracy {metrics['mean_accuracy']:.4f} (majority baseline "
                  f"{metrics.get('mean_majority_accuracy', float('nan')):.4f}).", ""]
    lines += ["| attribute | threshold |", "|---|---|"]
    lines += [f"| {a} | {t:.3f} |" for a, t in zip(info.attributes, info.thresholds)]
    return "\n".join(lines) + "\n"


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise AttrnetError(f"ONNX export needs {', '.join(missing)}: pip install 'attrnet[export]'")
