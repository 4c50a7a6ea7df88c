"""The `attrnet` command: parses arguments, calls one library function, prints. No logic of its own.

Each command imports what it calls inside its own function: `attrnet --help`, `--version` and a config mistake
answer before torch is imported (0.1 s instead of 5 s), and a command never pays for another's extras."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from attrnet import atomic
from attrnet.cli_args import parse_args
from attrnet.errors import AttrnetError
from attrnet.progress import QUIET_ENV


def cmd_train(args, extra: list[str] | None = None) -> None:
    from attrnet.config import load_config

    if args.resume and args.overwrite:
        raise AttrnetError("--resume and --overwrite contradict each other: continue the run, or replace it")
    overrides = (extra or []) + list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides)  # before torch is imported: a config mistake fails in a second
    out = Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "default")
    atomic.check_writable(out, folder=True)
    from attrnet.engine.train import fit
    from attrnet.report.tables import format_table

    if cfg.mtl.enabled:
        from attrnet.paper.pipeline import run_mtl
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
    from attrnet.engine.evaluate import evaluate_checkpoint
    from attrnet.report.jsonable import to_jsonable
    from attrnet.report.tables import format_subgroup_table, format_table

    if args.out:
        atomic.check_writable(args.out)
    result = evaluate_checkpoint(args.checkpoint, args.data, args.format, args.split, args.device, args.batch_size,
                                 tta=args.tta, by=args.by, precision=args.precision)
    print(format_table(result))
    if result.get("subgroups"):
        print(format_subgroup_table(result["subgroups"]))
    if result.get("skipped_unreadable"):
        print(f"skipped {result['skipped_unreadable']} unreadable image(s)")
    if args.out:
        atomic.write_json(args.out, to_jsonable(result))
        print(f"wrote {args.out}")


SHOWN = 10  # unreadable images listed with their reasons on the terminal


def decision_table(rows: list[dict], names: list[str], thresholds) -> str:
    """predict's terminal table: per image and attribute the probability, starred where it is a yes (at or above
    the attribute's threshold, given in the second row): a 0.50 under a 0.59 threshold is not a yes."""
    width = max([len("threshold")] + [len(r["image"]) for r in rows])
    cells = [max(len(a), 5) for a in names]
    lines = ["image".ljust(width) + "".join(" " + a.rjust(c) for a, c in zip(names, cells)),
             "threshold".ljust(width) + "".join(f" {t:{c}.2f}" for t, c in zip(thresholds, cells))]
    for r in rows:
        lines.append(r["image"].ljust(width) + "".join(
            " " + (f"{r['probabilities'][a]:.2f}" + ("*" if r["attributes"][a] else " ")).rjust(c)
            for a, c in zip(names, cells)))
    lines.append("* = yes: the probability is at or above the attribute's threshold")
    return "\n".join(lines)


def cmd_predict(args) -> None:
    from attrnet.data.images import find_images
    from attrnet.inference import load_model
    from attrnet.inference.sources import read_info
    from attrnet.predict import check_output, predict_to_file

    if args.ray:
        _predict_on_ray(args)
        return
    if args.out:
        atomic.check_writable(args.out)
        check_output(args.out)
    paths = find_images(args.paths)  # a missing image or folder is reported before the model is loaded
    faces = _use_faces(read_info(args.checkpoint) if Path(args.checkpoint).exists() else None, args.faces)
    predictor = load_model(args.checkpoint, args.device, args.tta, precision=args.precision, runtime=args.runtime)
    if faces or (faces is None and _use_faces(predictor.info, args.faces)):
        bad = _predict_faces(predictor, paths, args)
    else:
        n, bad, rows = predict_to_file(predictor, paths, args.out, args.batch_size)
        print(decision_table(rows, predictor.attributes, predictor.thresholds) if not args.out
              else f"wrote {n} predictions to {args.out}")
    if bad:  # each with its reason, whatever the output
        print(f"skipped {len(bad)} unreadable image(s):", file=sys.stderr)
        for path, why in bad[:SHOWN]:
            print(f"  {why}", file=sys.stderr)
        if len(bad) > SHOWN:
            print(f"  ... and {len(bad) - SHOWN} more" + (f" (all in {args.out})" if str(args.out).endswith(".json")
                                                          else ""), file=sys.stderr)


def _predict_on_ray(args) -> None:
    from attrnet.data.images import find_images
    from attrnet.inference.sources import read_info
    from attrnet.predict_ray import check_ray_output, predict_folder_on_ray, require_ray_data

    out = check_ray_output(args.out)
    atomic.check_writable(out)
    paths = find_images(args.paths)
    require_ray_data()
    info = read_info(args.checkpoint)  # the driver needs the names and thresholds; the workers load the model
    if info.preprocessing.input == "aligned_face" and args.faces != "off":
        raise AttrnetError("predict --ray reads each image whole; for a model of aligned faces add --faces off "
                           "(aligned crops, e.g. from attrnet data align), or predict faces without --ray")
    outcome = predict_folder_on_ray(args.checkpoint, paths, out, info.attributes, info.thresholds, args.address,
                                    args.workers, args.batch_size, args.tta, args.precision)
    print(f"wrote {outcome.rows} predictions to {out} ({outcome.predicted} predicted now, {outcome.resumed} "
          f"finished by an earlier run)")
    if outcome.unreadable:
        print(f"skipped {len(outcome.unreadable)} unreadable image(s):", file=sys.stderr)
        for _, why in outcome.unreadable[:SHOWN]:
            print(f"  {why}", file=sys.stderr)


def _use_faces(info, mode: str) -> bool | None:
    """--faces: on, off, or auto (on exactly when the model was trained on aligned faces); None when the model's
    description is not at hand yet (a Hub repo id: known once downloaded). Says so on the first line when a face
    model reads each image whole."""
    if info is None:
        return None
    aligned = info.preprocessing.input == "aligned_face"
    if mode == "on" and not aligned:
        raise AttrnetError(f"--faces on: {info.source} was trained on whole images, not on aligned faces; "
                           f"predict the images whole (--faces off)")
    if mode == "off" and aligned:
        print(f"note: {info.source} was trained on aligned faces; with --faces off each image is read as if it "
              f"were one (--faces auto finds and aligns the faces of ordinary photos)", file=sys.stderr)
    use = mode == "on" or (mode == "auto" and aligned)
    if use:
        from attrnet.faces.detect import require_facenet
        require_facenet()  # the faces extra: one line saying how to install it, before anything is written
    return use


def _predict_faces(model, paths, args) -> list:
    from attrnet.predict import predict_faces_to_file

    outcome = predict_faces_to_file(model, paths, args.out, args.batch_size)
    if args.out:
        print(f"wrote {outcome.faces} face(s) of {len(paths)} image(s) to {args.out}")
    else:
        print(face_table(outcome.rows, model.attributes, model.thresholds))
    if outcome.without_face:
        print(f"{len(outcome.without_face)} image(s) without a face, e.g. {outcome.without_face[0]}", file=sys.stderr)
    return outcome.unreadable


def face_table(images: list[dict], names: list[str], thresholds) -> str:
    """predict --faces' terminal table: one line per face (image, face number from 0, largest first, its box),
    then each attribute's probability, starred where it is a yes."""
    rows = []
    for image in images:
        for j, f in enumerate(image["faces"]):
            box = ",".join(f"{v:.0f}" for v in f["box"])
            rows.append({"image": f"{image['image']} #{j} [{box}]", "probabilities": f["probabilities"],
                         "attributes": f["attributes"]})
    return decision_table(rows, names, thresholds)


def cmd_data(args) -> None:
    if args.data_command == "synth":
        from attrnet.data.synthetic import write_synthetic_celeba

        out = atomic.check_writable(args.out, folder=True)
        if out.is_dir() and any(out.iterdir()) and not args.overwrite:
            raise AttrnetError(f"--out {out} already has files; choose a new folder or add --overwrite")
        t0 = time.perf_counter()
        write_synthetic_celeba(out, args.n, args.seed, size=(args.size, args.size))
        print(f"wrote {args.n} synthetic faces to {args.out} in {time.perf_counter() - t0:.1f}s")
    elif args.data_command == "align":
        from attrnet.faces.detect import require_facenet
        from attrnet.faces.folder import align_folder

        atomic.check_writable(args.out, folder=True)
        require_facenet()
        report = align_folder(args.src, args.out, args.labels, args.layout, args.overwrite, args.device)
        print(f"wrote {report.written} aligned face(s) to {args.out}; {len(report.no_face)} photo(s) without a face "
              f"(no_face.txt), {len(report.several)} with several (several_faces.txt: the largest was kept)"
              + (f", {len(report.unreadable)} unreadable (unreadable.txt)" if report.unreadable else ""))
    else:
        from attrnet.data.inspect import format_inspection, inspect_folder

        print(format_inspection(inspect_folder(args.root, args.format, args.labels)))


def cmd_demo(args) -> None:
    from attrnet.demo import run_demo
    from attrnet.report.tables import format_table

    t0 = time.perf_counter()
    result, run_dir = run_demo(Path(args.out), args.device)
    print(format_table(result))
    print(f"\nmean accuracy {result['mean_accuracy']:.3f} on the synthetic test split "
          f"(majority-class baseline {result['mean_majority_accuracy']:.3f}) in {time.perf_counter() - t0:.0f}s")
    print(f"plots: {run_dir / 'plots' / 'attribute_accuracy.png'}, {run_dir / 'plots' / 'training_curves.png'}")
    print(f"try:   {_attrnet_command()} predict {run_dir} {args.out}/synthetic-data/img_align_celeba/000001.jpg")


def _attrnet_command() -> str:
    """How the user can type attrnet here: `attrnet` when it is on PATH, else this environment's own script
    (`make demo` runs .venv/bin/attrnet without activating the environment)."""
    if shutil.which("attrnet"):
        return "attrnet"
    script = Path(sys.executable).parent / "attrnet"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def cmd_bench(args) -> None:
    from attrnet.bench import run_bench

    for row in run_bench(args):
        print(json.dumps(row), flush=True)


def cmd_export(args) -> None:
    from attrnet.card import model_card
    from attrnet.inference import load_model
    from attrnet.inference.export import check_export_target, export_hub, export_onnx, sidecar_path

    atomic.check_writable(args.out, folder=args.format == "hub")
    check_export_target(args.out, args.format, args.overwrite)  # before the model is loaded
    model = load_model(args.model, device="cpu", tta=args.tta, precision="fp32")
    if args.format == "onnx":
        out = export_onnx(model, args.out, args.tta or "none", overwrite=args.overwrite)
        print(f"wrote {out} and {sidecar_path(out)}")
    else:
        out = export_hub(model, args.out, card=model_card(model.info), overwrite=args.overwrite)
        print(f"wrote {out} (config.json, model.safetensors, README.md: the model card)")


def cmd_checkpoint(args) -> None:
    from attrnet.model_file import AlreadySafe, upgrade_file

    try:
        out = upgrade_file(args.file, args.out)
    except AlreadySafe as exc:
        print(exc)
        return
    print(f"wrote {out} (weights-only; attrnet opens it without running code)")


def cmd_serve(args) -> None:
    from attrnet.serve import server
    from attrnet.serve.settings import ServeSettings

    settings = ServeSettings(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_upload_mb=args.max_upload_mb,
                             max_files=args.max_files, api_key=args.api_key or None, cors_origins=args.cors_origin)
    warning = server.exposure_warning(args.host, settings)
    if warning:
        print(f"attrnet: warning: {warning}", file=sys.stderr)
    if args.ray:
        from attrnet.serve import ray_serve

        ray_serve.require_ray()  # one line when the extra is missing, before anything starts
        from attrnet.inference.sources import read_info
        if Path(args.model).exists():
            read_info(args.model)  # not a model: one line here, not a replica's traceback in Ray's logs
        replicas = ray_serve.Replicas(args.replicas, args.min_replicas, args.max_replicas, cpus=args.cpus_per_replica)
        replicas.options()  # inconsistent bounds: an error now
        server.check_port_free(args.host, args.port)
        ray_serve.run(args.model, args.host, args.port, settings, replicas, args.address, args.runtime,
                      "cpu" if args.device == "auto" else args.device, args.precision)
        return
    server.serve(args.model, host=args.host, port=args.port, runtime=args.runtime, device=args.device,
                 settings=settings, precision=args.precision)


def cmd_card(args) -> None:
    from attrnet.card import model_card, read_evaluation, write_card
    from attrnet.inference.sources import read_info

    if args.by and args.evaluation:
        raise AttrnetError("--by and --evaluation both give the subgroups: use one of them")
    if args.out:
        atomic.check_writable(args.out)
    evaluation = read_evaluation(args.evaluation) if args.evaluation else None
    if args.by:  # evaluate, then render
        from attrnet.engine.evaluate import evaluate_checkpoint

        evaluation = evaluate_checkpoint(args.model, args.data, None, args.split, args.device, progress=False,
                                         by=args.by)
    text = model_card(read_info(args.model), evaluation, license=args.license)
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


def cmd_paper_table(args) -> None:
    from attrnet.compare import parse_seeds
    from attrnet.config import load_config
    from attrnet.paper.reproduce import check_paper_config, parse_rows, run_paper_table

    splits, rows = parse_seeds(args.splits, "--splits"), parse_rows(args.rows)
    overrides = list(args.overrides) + ([f"train.device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides)
    check_paper_config(cfg, args.config)
    atomic.check_writable(args.out, folder=True)
    result = run_paper_table(cfg, args.out, splits, rows)
    print((Path(args.out) / "table.md").read_text(encoding="utf-8"))
    print(f"wrote {Path(args.out) / 'table.json'} and table.md ({sum(result['seconds'].values()):.0f} s)")


COMMANDS = {"checkpoint": cmd_checkpoint, "export": cmd_export, "train": cmd_train, "distill": cmd_distill, "evaluate": cmd_evaluate, "predict": cmd_predict, "data": cmd_data,
            "demo": cmd_demo, "bench": cmd_bench, "compare": cmd_compare, "paper-table": cmd_paper_table, "serve": cmd_serve, "card": cmd_card}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    if int(os.environ.get("RANK", "0") or 0) != 0:
        level = logging.WARNING  # under torchrun only rank 0 reports progress
    if args.quiet:
        os.environ[QUIET_ENV] = "1"  # no progress bars either, in this process and the workers it starts
    # attrnet's own messages at `level`; other packages' (onnxscript, PIL, matplotlib, ...) only when they warn
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("attrnet").setLevel(level)
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
