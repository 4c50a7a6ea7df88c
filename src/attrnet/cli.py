"""The `attrnet` command: parses arguments, calls one library function, prints. No logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from attrnet import __version__, atomic
from attrnet.config import TTA_MODES
from attrnet.errors import AttrnetError


def _count(minimum: int):
    """An argparse type: a whole number of at least `minimum` (argparse prints the usage line and exits 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
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


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="make or inspect data sets")
    dsub = p.add_subparsers(dest="data_command", metavar="{synth,inspect}", required=True)
    s = dsub.add_parser("synth", help="draw synthetic faces in the CelebA layout",
                        description="Synthetic faces with the seed's 8 attributes, in the CelebA layout.")
    s.add_argument("--out", required=True, help="folder to write (new or empty, unless --overwrite)")
    s.add_argument("--n", type=_count(1), default=4000, help="number of images")
    s.add_argument("--seed", type=_count(0), default=0)
    s.add_argument("--size", type=_count(8), default=64, help="image width and height in pixels (8 or more)")
    s.add_argument("--overwrite", action="store_true", help="write into a folder that already has files")
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


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve a model: REST API, web page, Prometheus metrics",
                       description="POST /v1/predict (multipart, images in fields named file), GET /v1/model, "
                                   "/healthz, /metrics and a web page at /. Binds 127.0.0.1 unless told otherwise. "
                                   "Needs the serve extra: pip install 'attrnet[serve]'.")
    p.add_argument("model", metavar="MODEL", help="a run folder, a .pt checkpoint, an exported folder or .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_count(0), default=8000)
    p.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    p.add_argument("--device", default="auto")
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
    parser.add_argument("--version", action="version", version=f"attrnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_demo, _add_train, _add_distill, _add_evaluate, _add_predict, _add_data, _add_bench, _add_export,
                _add_checkpoint, _add_compare, _add_serve, _add_card):
        add(sub)
    return parser


def cmd_train(args, extra: list[str] | None = None) -> None:
    from attrnet.config import load_config
    from attrnet.engine.train import fit
    from attrnet.report import format_table

    if args.resume and args.overwrite:
        raise AttrnetError("--resume and --overwrite contradict each other: continue the run, or replace it")
    overrides = (extra or []) + list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "default")
    atomic.check_writable(out, folder=True)
    if cfg.mtl.enabled:
        from attrnet.mtl.pipeline import run_mtl
        result = run_mtl(cfg, out, resume=args.resume, overwrite=args.overwrite)
    else:
        result = fit(cfg, out, resume=args.resume, overwrite=args.overwrite)
    if result is not None:
        print(format_table(result))
        what = "metrics.json, mtl_model.pt, cnn/, plots/" if cfg.mtl.enabled else "metrics.json, checkpoints/, plots/"
        print(f"\nrun folder: {out}  ({what})")


def cmd_distill(args) -> None:
    from attrnet.inference.checkpoint import resolve_checkpoint

    # argparse cannot split two lists of positionals: the overrides are the items from the first key=value on
    first = next((i for i, a in enumerate(args.teachers) if "=" in a and not Path(a).exists()), len(args.teachers))
    args.overrides = args.teachers[first:]
    teachers = [str(Path(t).expanduser().resolve()) for t in args.teachers[:first]]
    if not teachers:
        raise AttrnetError("distill needs at least one TEACHER run folder before the key=value overrides")
    for t in teachers:
        resolve_checkpoint(t)  # a missing or unreadable teacher is reported before anything else
    if args.config is None:
        first = Path(teachers[0])
        args.config = str((first if first.is_dir() else first.parent.parent) / "config.yaml")
        if not Path(args.config).is_file():
            raise AttrnetError(f"{teachers[0]} has no config.yaml beside it: give the student's --config")
    cmd_train(args, [f"train.teachers={json.dumps(teachers)}", f"train.distill_weight={args.weight}"])


def cmd_evaluate(args) -> None:
    from attrnet import report
    from attrnet.engine.evaluate import evaluate_checkpoint

    if args.out:
        atomic.check_writable(args.out)
    result = evaluate_checkpoint(args.checkpoint, args.data, args.format, args.split, args.device, args.batch_size,
                                 tta=args.tta, by=args.by)
    print(report.format_table(result))
    if result.get("subgroups"):
        print(report.format_subgroup_table(result["subgroups"]))
    if result.get("skipped_unreadable"):
        print(f"skipped {result['skipped_unreadable']} unreadable image(s)")
    if args.out:
        atomic.write_json(args.out, report.to_jsonable(result))
        print(f"wrote {args.out}")


def cmd_predict(args) -> None:
    from attrnet.inference import load_model
    from attrnet.predict import predict_to_file

    if args.out:
        atomic.check_writable(args.out)
    predictor = load_model(args.checkpoint, args.device, args.tta, runtime=args.runtime)
    n, bad, rows = predict_to_file(predictor, args.paths, args.out, args.batch_size)
    if not args.out:
        names = predictor.attributes
        width = max(len(r["image"]) for r in rows) if rows else 5
        print("image".ljust(width), " ".join(names))
        for r in rows:
            print(r["image"].ljust(width), " ".join(f"{r['probabilities'][a]:.2f}".rjust(len(a)) for a in names))
    else:
        print(f"wrote {n} predictions to {args.out}")
    if bad:
        print(f"skipped {len(bad)} unreadable image(s), e.g. {bad[0]}", file=sys.stderr)


def cmd_data(args) -> None:
    if args.data_command == "synth":
        from attrnet.data.synthetic import write_synthetic_celeba

        out = atomic.check_writable(args.out, folder=True)
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise AttrnetError(f"--out {out} already has files; choose a new folder or add --overwrite")
        t0 = time.perf_counter()
        write_synthetic_celeba(out, args.n, args.seed, size=(args.size, args.size))
        print(f"wrote {args.n} synthetic faces to {args.out} in {time.perf_counter() - t0:.1f}s")
    else:
        from attrnet.data.inspect import inspect_folder, format_inspection

        print(format_inspection(inspect_folder(args.root, args.format, args.labels)))


def cmd_demo(args) -> None:
    from attrnet.demo import run_demo
    from attrnet.report import format_table

    t0 = time.perf_counter()
    result, run_dir = run_demo(Path(args.out), args.device)
    print(format_table(result))
    print(f"\nmean accuracy {result['mean_accuracy']:.3f} on the synthetic test split "
          f"(majority-class baseline {result['mean_majority_accuracy']:.3f}) in {time.perf_counter() - t0:.0f}s")
    print(f"plots: {run_dir / 'plots' / 'attribute_accuracy.png'}, {run_dir / 'plots' / 'training_curves.png'}")
    print(f"try:   attrnet predict {run_dir} {args.out}/synthetic-data/img_align_celeba/000001.jpg")


def cmd_bench(args) -> None:
    from attrnet.bench import run_bench

    for row in run_bench(args):
        print(json.dumps(row), flush=True)


def cmd_export(args) -> None:
    from attrnet.inference import load_model
    from attrnet.inference.export import export_hub, export_onnx, sidecar_path

    atomic.check_writable(args.out, folder=args.format == "hub")
    model = load_model(args.model, device="cpu", tta=args.tta, precision="fp32")
    if args.format == "onnx":
        out = export_onnx(model, args.out, args.tta or "none")
        print(f"wrote {out} and {sidecar_path(out)}")
    else:
        from attrnet.card import model_card

        out = export_hub(model, args.out, card=model_card(model.info))
        print(f"wrote {out} (config.json, model.safetensors, README.md: the model card)")


def cmd_checkpoint(args) -> None:
    from attrnet.model_file import upgrade_file

    out = upgrade_file(args.file, args.out)
    print(f"wrote {out} (weights-only; attrnet opens it without running code)")


def cmd_serve(args) -> None:
    from attrnet.serve import server
    from attrnet.serve.settings import ServeSettings

    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_upload_mb=args.max_upload_mb,
                             max_files=args.max_files, api_key=args.api_key or None, cors_origins=args.cors_origin)
    warning = server.exposure_warning(args.host, settings)
    if warning:
        print(f"attrnet: warning: {warning}", file=sys.stderr)
    server.serve(args.model, host=args.host, port=args.port, runtime=args.runtime, device=args.device,
                 settings=settings)


def cmd_card(args) -> None:
    from attrnet.card import build_card, write_card

    if args.out:
        atomic.check_writable(args.out)
    text = build_card(args.model, by=args.by, data=args.data, split=args.split, device=args.device,
                      evaluation_file=args.evaluation, license=args.license)
    if args.out:
        print(f"wrote {write_card(text, args.out)}")
    else:
        print(text, end="")


def cmd_compare(args) -> None:
    from attrnet.compare import format_markdown, parse_methods, parse_seeds, run_comparison
    from attrnet.config import load_config

    methods, seeds = parse_methods(args.methods), parse_seeds(args.seeds)
    cfg = load_config(args.config, list(args.overrides))
    atomic.check_writable(args.out, folder=True)
    result = run_comparison(cfg, methods, seeds, args.out)
    print(format_markdown(result["rows"]))
    print(f"{result['trained']} runs trained, {result['skipped']} finished before; "
          f"wrote {', '.join(str(p) for p in result['paths'].values())}")


COMMANDS = {"checkpoint": cmd_checkpoint, "export": cmd_export, "train": cmd_train, "distill": cmd_distill, "evaluate": cmd_evaluate, "predict": cmd_predict, "data": cmd_data,
            "demo": cmd_demo, "bench": cmd_bench, "compare": cmd_compare, "serve": cmd_serve, "card": cmd_card}


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    if int(os.environ.get("RANK", "0") or 0) != 0:
        level = logging.WARNING  # under torchrun only rank 0 reports progress
    logging.basicConfig(level=level,
                        format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("PIL").setLevel(logging.WARNING)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        COMMANDS[args.command](args)
    except AttrnetError as exc:
        print(f"attrnet: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused (disk full, permissions, a file vanished): not our bug
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"attrnet: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attrnet: interrupted (checkpoints written so far are intact; --resume continues)", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line by default, the whole traceback with -v
        if args.verbose:
            raise
        print(f"attrnet: internal error: {type(exc).__name__}: {_one_line(exc)} (a bug: please report it; "
              f"-v shows the traceback)", file=sys.stderr)
        return 1
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
