"""The `attrnet` command's arguments: one parser per command (build_parser) and parse_args. The commands
themselves are in attrnet.cli."""

from __future__ import annotations

import argparse
import os

from attrnet import __version__
from attrnet.config_rules import PRECISIONS, TTA_MODES


def _count(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number of at least `minimum` (and at most `maximum`); a bad one is the usage
    error's one line and exit 2."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    parse.__name__ = "count"
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other error: `attrnet: error: ...`, exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"attrnet: error: {message} (see {self.prog} --help)\n")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a config file",
                       description="Train from a YAML config; key=value arguments override it "
                                   "(values are YAML: data.attributes=[Smiling,Male] train.epochs=5).")
    p.add_argument("--config", help="YAML config (see configs/); defaults when omitted")
    p.add_argument("--out", help="run folder (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run folder's checkpoints and metrics (otherwise an existing run is an error)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (same as train.device=...)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def _add_distill(sub) -> None:
    p = sub.add_parser("distill", help="train one model from the labels and several trained models' predictions",
                       description="Distillation: the student's training targets are the labels blended with the "
                                   "teachers' mean probability (train.teachers, train.distill_weight); the teachers' "
                                   "and their ensemble's test figures go to RUN/teachers.json.")
    p.add_argument("teachers", nargs="+", metavar="TEACHER... [key=value ...]",
                   help="run folders (or .pt checkpoints) of trained models, then dotted config overrides of the "
                        "student's config")
    p.add_argument("--out", required=True, help="the student's run folder")
    p.add_argument("--config", help="the student's YAML config (default: the first teacher's config.yaml)")
    p.add_argument("--weight", type=_amount(0), default=0.5,
                   help="w in target = (1 - w) label + w teachers' probability (default 0.5)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoints/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder's checkpoints and metrics")
    p.add_argument("--device", help="cpu, cuda or cuda:N (same as train.device=...)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained model on labelled images",
                       description="Metrics per attribute at the checkpoint's tuned thresholds.")
    p.add_argument("checkpoint", help="a run folder or a .pt checkpoint")
    p.add_argument("--data", help="data folder (default: the one the run was trained on)")
    p.add_argument("--format", help="data format (default: the run's): celeba, csv, clothing, awa2")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--out", help="write the metrics as JSON to this file")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_count(1), default=512)
    p.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the run's model.tta)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (bf16 on a GPU or a CPU with native bf16, else fp32), bf16 or fp32 (the exported "
                        "ONNX graph's arithmetic); the choice is logged")
    p.add_argument("--by", type=_names, help="comma-separated attributes of the data, e.g. Male,Young: every metric "
                                             "also for the images whose true label of each is 1 and is 0")


def _names(text: str) -> list[str]:
    """An argparse type: comma-separated names, none empty."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated attribute names, got {text!r}")
    return names


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="predict attributes of images or folders",
                       description="Per-attribute probability and 0/1 decision for each image.")
    p.add_argument("checkpoint", metavar="MODEL", help="a run folder, a .pt checkpoint, an exported folder or .onnx file, or a Hub repo id")
    p.add_argument("paths", nargs="+", help="image files or folders")
    p.add_argument("--out", help="FILE.csv or FILE.json (default: a table on standard output)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=_count(1), default=256)
    p.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation (default: the run's model.tta)")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch",
                   help="torch, or onnx: ONNX Runtime on the CPU (MODEL: an exported .onnx file; default torch)")
    p.add_argument("--ray", action="store_true",
                   help="label on a Ray cluster with Ray Data (--out FILE.csv/.json/.parquet; a stopped run resumes "
                        "where it was; pip install 'attrnet[ray]')")
    p.add_argument("--address", help="with --ray: an existing cluster (ray://HOST:10001 or auto; default: a local one)")
    p.add_argument("--workers", type=_count(0), default=0,
                   help="with --ray: model copies working at once (default 0: one per CPU of the cluster)")
    p.add_argument("--faces", choices=["auto", "on", "off"], default="auto",
                   help="auto (default): for a model trained on aligned faces (CelebA), find each photo's faces, align "
                        "them to its template and give one row per face; on: always; off: read each image whole "
                        "(needs the faces extra: pip install 'attrnet[faces]')")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (bf16 on a GPU or a CPU with native bf16, else fp32), bf16 or fp32 (the exported "
                        "ONNX graph's arithmetic); the choice is logged")


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="make or inspect data sets")
    dsub = p.add_subparsers(dest="data_command", metavar="{synth,align,inspect}", required=True)
    s = dsub.add_parser("synth", help="draw synthetic faces in the CelebA layout",
                        description="Synthetic faces with the seed's 8 attributes, in the CelebA layout.")
    s.add_argument("--out", required=True, help="folder to write (new or empty, unless --overwrite)")
    s.add_argument("--n", type=_count(1), default=4000, help="number of images")
    s.add_argument("--seed", type=_count(0), default=0)
    s.add_argument("--size", type=_count(8), default=64, help="image width and height in pixels (8 or more)")
    s.add_argument("--overwrite", action="store_true", help="write into a folder that already has files")
    a = dsub.add_parser("align", help="turn a folder of photos into aligned face crops (CelebA's frame)",
                        description="Each photo's largest face, found with its landmarks and aligned to CelebA's "
                                    "template, written as a 178 x 218 JPEG; photos without a face are listed in "
                                    "no_face.txt, photos with several in several_faces.txt. With --labels, the "
                                    "rows of the photos that gave a face are written beside the crops, ready to "
                                    "train on. Needs the faces extra: pip install 'attrnet[faces]'.")
    a.add_argument("src", help="folder of photos")
    a.add_argument("--out", required=True, help="new folder for the aligned crops")
    a.add_argument("--labels", help="CSV image,attrA,... naming the photos (relative to SRC, or an absolute path)")
    a.add_argument("--layout", choices=["csv", "celeba"], default="csv",
                   help="csv: images/ + labels.csv (default); celeba: img_align_celeba/ + list_attr_celeba.txt")
    a.add_argument("--overwrite", action="store_true", help="replace a folder that is not empty")
    a.add_argument("--device", default="cpu")
    i = dsub.add_parser("inspect", help="counts, label rates and image sizes of a data set",
                        description="Counts, positive and unknown rates per attribute, image sizes, "
                                    "unreadable files.")
    i.add_argument("root", help="data folder")
    i.add_argument("--format", default=None, help="celeba, csv, clothing or awa2 (default: guessed)")
    i.add_argument("--labels", default="labels.csv", help="csv format: the label file")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthesise data, train a small model, evaluate (a few minutes on CPU)",
                       description="Synthesise faces if absent, train, evaluate, print the table.")
    p.add_argument("--out", default="runs", help="folder for the data and the run (default: runs)")
    p.add_argument("--device", default="auto")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="training and prediction throughput, one JSON line per case",
                       description="Compare the seed's loop, a plain DataLoader loop and attrnet's pipeline.")
    p.add_argument("--device", default="auto")
    p.add_argument("--n", type=_count(0), default=0, help="images (default: 256 on CPU, 20000 on GPU)")
    p.add_argument("--image-size", type=_count(0), default=0, help="default: 64 on CPU, 128 on GPU")
    p.add_argument("--batch-size", type=_count(0), default=0, help="default: 32 on CPU, 512 on GPU")
    p.add_argument("--attributes", type=_count(1), default=40)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--cases", default="all", help="comma-separated case names, or all")
    p.add_argument("--data", help="a CelebA-layout folder to read (default: synthetic JPEGs written once)")
    p.add_argument("--workdir", default=None, help="where to write synthetic data and the cache")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="export a trained model to ONNX or a Hugging Face-style folder",
                       description="onnx: one graph from uint8 images [N, C, H, W] to probabilities, normalisation "
                                   "inside, with a .json sidecar (attributes, thresholds, size, colour, resize). "
                                   "hub: config.json + model.safetensors + README.md, readable by attrnet "
                                   "predict/serve offline and uploadable to the Hugging Face Hub.")
    p.add_argument("model", metavar="MODEL", help="a run folder or a .pt checkpoint")
    p.add_argument("--format", required=True, choices=["onnx", "hub"])
    p.add_argument("--out", required=True, help="model.onnx (onnx) or a new folder (hub)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing export at --out (otherwise an existing one is an error)")
    p.add_argument("--tta", choices=TTA_MODES, help="test-time augmentation to bake in (onnx: none or flip; "
                                                    "default: the run's for hub, none for onnx)")


def _add_checkpoint(sub) -> None:
    p = sub.add_parser("checkpoint", help="convert an older attrnet checkpoint to the safe, weights-only form")
    csub = p.add_subparsers(dest="checkpoint_command", metavar="{upgrade}", required=True)
    u = csub.add_parser("upgrade", help="re-save an older checkpoint that attrnet now refuses to open",
                        description="Checkpoints are opened weights-only: tensors, numbers, strings, lists and "
                                    "dicts. An older file that holds other Python objects is refused; this "
                                    "converts it. It unpickles the file without restriction, which runs any code "
                                    "the file carries: use it only on a file from a source you trust.")
    u.add_argument("file", help="the checkpoint (.pt) to convert")
    u.add_argument("--out", help="where to write the converted file (default: replace FILE)")


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="train every loss weighting method with several seeds; one table",
                       description="One training per method and seed on the same data and split; finished "
                                   "runs are skipped. Writes OUT/comparison.csv, .md and .png.")
    p.add_argument("--config", help="YAML config (see configs/); defaults when omitted")
    p.add_argument("--methods", required=True,
                   help="comma-separated: ew, uw, dwa, rlw, famo, mgda, pcgrad, cagrad, imtl_g, latent")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    p.add_argument("--out", required=True, help="folder of the runs and the table")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def _amount(minimum: float, inclusive: bool = True):
    """An argparse type: a number of at least (or, not inclusive, above) `minimum`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if value < minimum or (value == minimum and not inclusive) or value != value:
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'above'} {minimum:g}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def _add_paper_table(sub) -> None:
    p = sub.add_parser("paper-table", help="reproduce the paper's Clothing table (Abdulnabi et al. 2015, Table III)",
                       description="Every row of the paper's Table III (majority, S-extract, M-extract, S-CNN, "
                                   "M-CNN, MG-CNN, and the solver on fine-tuned features) on seeded splits of the "
                                   "Clothing Attributes Dataset: mean accuracy and balanced accuracy per group, mean "
                                   "and spread over splits, beside the paper's figures. Finished runs are reused.")
    p.add_argument("--config", required=True, help="the MG-CNN recipe, e.g. configs/clothing-paper.yaml")
    p.add_argument("--out", required=True, help="folder of the runs, table.json and table.md")
    p.add_argument("--splits", default="0,1,2,3,4", help="comma-separated split seeds (default 0,1,2,3,4)")
    p.add_argument("--rows", help="comma-separated rows (default all): majority, S-extract, M-extract, S-CNN, M-CNN, "
                                  "MG-CNN, 'M-CNN (solver)', 'MG-CNN (solver)'")
    p.add_argument("--device", help="cpu, cuda or cuda:N (same as train.device=...)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve a model: REST API, web page, Prometheus metrics",
                       description="POST /v1/predict (multipart, images in fields named file), GET /v1/model, "
                                   "/healthz, /metrics and a web page at /. Binds 127.0.0.1 unless told otherwise. "
                                   "Needs the serve extra: pip install 'attrnet[serve]'.")
    p.add_argument("model", metavar="MODEL", help="a run folder, a .pt checkpoint, an exported folder or .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_count(0, 65535), default=8000, help="TCP port (0-65535; default 8000)")
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (bf16 on a GPU or a CPU with native bf16, else fp32), bf16 or fp32 (the exported "
                        "ONNX graph's arithmetic); the choice is logged")
    p.add_argument("--max-batch", type=_count(1), default=32, help="images per forward pass (default 32)")
    p.add_argument("--max-wait-ms", type=_amount(0), default=5.0,
                   help="how long a batch waits for more images once it has one (default 5)")
    p.add_argument("--max-upload-mb", type=_amount(0, inclusive=False), default=20.0,
                   help="bytes per request, in MB; larger uploads are refused while streaming (default 20)")
    p.add_argument("--max-files", type=_count(1), default=16, help="images per request (default 16)")
    p.add_argument("--api-key", default=os.environ.get("ATTRNET_API_KEY"),
                   help="require this key in the X-API-Key header on /v1/* (default: $ATTRNET_API_KEY, else none)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN to call the API (repeatable; default: CORS off)")
    ray = p.add_argument_group("on Ray Serve (pip install 'attrnet[ray]')")
    ray.add_argument("--ray", action="store_true",
                     help="serve the same app as a Ray Serve deployment: replicas, batching with serve.batch")
    ray.add_argument("--address", help="an existing Ray cluster (ray://HOST:10001 or auto; default: a local one)")
    ray.add_argument("--replicas", type=_count(1), default=1, help="replicas, each loading the model once (default 1)")
    ray.add_argument("--min-replicas", type=_count(0), help="autoscaling: at least this many replicas")
    ray.add_argument("--max-replicas", type=_count(1), help="autoscaling: at most this many replicas")
    ray.add_argument("--cpus-per-replica", type=_amount(0, inclusive=False), default=1.0,
                     help="CPUs Ray reserves for each replica (default 1)")


def _add_card(sub) -> None:
    p = sub.add_parser("card", help="write a model card (Hugging Face format) for a trained model",
                       description="What the model predicts, from what data and split, per-attribute test figures "
                                   "beside the majority baseline, groups, uses and limitations; with --by, "
                                   "subgroup figures computed on --data.")
    p.add_argument("model", metavar="MODEL", help="a run folder, a .pt checkpoint, an exported folder or .onnx file")
    p.add_argument("--out", help="file to write (e.g. MODEL_CARD.md; default: standard output)")
    p.add_argument("--by", type=_names, help="subgroups: comma-separated attributes of the data, e.g. Male,Young "
                                             "(evaluates a run folder or checkpoint on --data)")
    p.add_argument("--data", help="with --by: data folder (default: the one the run was trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--evaluation", help="instead of --by: the JSON of `attrnet evaluate --by ... --out FILE`")
    p.add_argument("--license", help="the card's licence (default: other, with the data set's terms; or unknown)")
    p.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attrnet", description="Multi-task prediction of binary image attributes.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the traceback of an internal error")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="warnings and errors only, no progress bars (bars are drawn only on a terminal anyway)")
    parser.add_argument("--version", action="version", version=f"attrnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_demo, _add_train, _add_distill, _add_evaluate, _add_predict, _add_data, _add_bench, _add_export,
                _add_checkpoint, _add_compare, _add_paper_table, _add_serve, _add_card):
        add(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """argparse, with the key=value overrides (and distill's teachers) allowed after options as well as before:
    argparse matches a command's positionals in one block, so `train --out R a=1 --config C b=2` would leave b=2
    unrecognised."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    listed = getattr(args, "teachers" if args.command == "distill" else "overrides", None)
    if extra:
        if not isinstance(listed, list) or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        listed.extend(extra)
    return args
