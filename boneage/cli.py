"""The ``boneage`` command line: thin wrappers over the library, so every command runs the same code.

Every command is one entry of :data:`COMMANDS`: its options, and the ``"module:function"`` that runs it,
imported only when it runs. Building the parser therefore imports nothing heavy (``boneage --version`` and
``--help`` load no torch, OpenCV, Ray, pyarrow or pydicom). ``boneage X`` is ``python -m boneage X``, the one
way a command or job starts, on a laptop or under ``ray job submit``. Before a one-process command runs,
its CPU threads are pinned and its ``--device`` checked (``_prepare``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

from boneage import __version__
from boneage.clinical import (
    BAND_METHODS,
    DEFAULT_BANDS,
    DEFAULT_EPS,
    DEFAULT_LEVEL,
    RECALIBRATIONS,
    RESEARCH_USE_ONLY,
)
from boneage.devices import pin_threads, select_device
from boneage.errors import BoneAgeError, exit_code
from boneage.jobs import arguments as options
from boneage.logs import setup_logging


def _tta(value: str) -> int | None:
    """``auto`` (the calibration's count, none without one), or a number of test-time variants (0 = off)."""
    if value == "auto":
        return None
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("--tta must be auto or a number >= 0")
    return n


def _clinical_text(row) -> str:
    """The clinical outputs of one row, for the text output; then every labelled field of the result schema
    (:class:`boneage.predict.result.Output`)."""
    from boneage.clinical.reference import sds_text
    from boneage.predict.result import labelled_fields

    parts = []
    if row.bone_age_interval_low is not None:
        parts.append(f"{row.interval_level:.0%} interval {row.bone_age_interval_low:.1f}-{row.bone_age_interval_high:.1f}")
    if row.bone_age_minus_chronological_months is not None:
        parts.append(f"{row.bone_age_minus_chronological_months:+.1f} months vs chronological age")
    sds = sds_text(row.sds, row.sds_low, row.sds_high, row.maturity_category)
    if sds is not None:
        parts.append(sds)
    parts += [f"{out.label} {out.text(getattr(row, name))}" for name, out in labelled_fields(type(row)).items()
              if getattr(row, name) is not None]
    return f"; {'; '.join(parts)}" if parts else ""


def _row_text(row) -> str:
    """One scored film as a line: the bone age, or REFUSED and why; warnings in brackets."""
    from boneage.predict.result import Verdict

    quality = row.quality or {}
    verdict = quality.get("verdict")
    flags = f"  [{verdict}: {quality.get('detail')}]" if verdict in (Verdict.WARNING, Verdict.REFUSED) else ""
    if row.bone_age_months is None:
        return f"{row.path}: REFUSED, no bone age given{flags} (--score-anyway to score it)"
    return (f"{row.path}: {row.bone_age_months:.1f} months ({row.bone_age_years_months}), sex {row.sex}"
            f"{_clinical_text(row)}{flags}")


def images_of(inputs: Sequence[str]) -> Iterator[str]:
    """``predict``'s inputs in the order given, each folder (or URL prefix) replaced by its images, sorted,
    as ``score`` lists them; a file that is not there stays, to be reported as that film's error."""
    from boneage.files import storage

    for uri in inputs:
        try:
            listing = storage.scan_inputs([uri])
        except FileNotFoundError:
            yield uri
            continue
        if listing.skipped:
            print(f"{uri}: {len(listing.skipped)} entries skipped ("
                  f"{', '.join(f'{reason} {n}' for reason, n in listing.by_reason().items())})", file=sys.stderr)
        yield from listing.paths


def _cmd_predict(args: argparse.Namespace) -> int:
    from boneage.predict.predictor import Predictor
    from boneage.progress import Progress, is_terminal

    print(RESEARCH_USE_ONLY, file=sys.stderr, flush=True)  # stdout stays one result per line
    predictor = Predictor.load(args.model, device=args.device, batch_size=args.batch_size, tta=args.tta,
                               reference=args.reference, score_anyway=args.score_anyway)
    keep = bool(args.save_preprocessed or args.heatmap)
    paths = list(images_of(args.images))
    rows = predictor.predict_iter(paths, sex=args.sex, keep_preprocessed=keep,
                                  chronological_age_months=args.chronological_age)
    bar = Progress(len(paths), "predicting", enabled=is_terminal(sys.stderr))  # stdout: each result when ready
    failed = unwritten = 0
    for row in rows:
        if args.save_preprocessed and row.preprocessed is not None:
            uri = f"{args.save_preprocessed.rstrip('/')}/{row.id}.png"
            unwritten += not _write_output(uri, _png_bytes, (row.preprocessed,), row, "preprocessed")
        if args.heatmap and row.preprocessed is not None and row.bone_age_months is not None:
            from boneage.clinical.heatmap import figure_png

            uri = f"{args.heatmap.rstrip('/')}/{row.id}_heatmap.png"
            if _write_output(uri, lambda image, sex, aspect: figure_png(image, predictor.heatmap(image, sex), aspect),
                             (row.preprocessed, row.sex, row.hand_aspect), row, "heatmap"):
                row.extra["heatmap"] = uri
            else:
                unwritten += 1
        failed += row.error is not None
        if args.json:
            bar.print(json.dumps({**row.to_dict(), "notice": RESEARCH_USE_ONLY}))
        elif row.error:
            bar.print(f"{row.path}: ERROR {row.error}")
        else:
            bar.print(_row_text(row))
        bar.update(1)
    bar.close()
    if failed:
        print(f"{failed} of {len(paths)} file(s) could not be scored", file=sys.stderr)
    if unwritten:
        print(f"{unwritten} output file(s) could not be written (the results above are complete)", file=sys.stderr)
    return 1 if failed or unwritten else 0


def _png_bytes(image) -> bytes:
    import cv2

    _, png = cv2.imencode(".png", image)
    return png.tobytes()


def os_error_text(exc: OSError, uri: str | None = None) -> str:
    """One line for a failed read or write: the path and the OS's reason (read-only, full disk, not a folder)."""
    path = exc.filename or uri
    reason = (exc.strerror or str(exc)) + (f" (errno {exc.errno})" if exc.errno else "")
    return f"{path}: {reason}" if path else reason


def _write_output(uri: str, make, make_args: tuple, row, what: str) -> bool:
    """Write one extra output of a scored film; a failed write is one line on stderr and a ``<what>_error``
    in the row, never a traceback that loses the results of every film."""
    from boneage.files import storage

    try:
        storage.write_bytes(uri, make(*make_args))
    except OSError as exc:
        message = os_error_text(exc, uri)
        print(f"{row.path}: {what} not written: {message}", file=sys.stderr, flush=True)
        row.extra[f"{what}_error"] = message
        return False
    return True


def _cmd_init_checkpoint(args: argparse.Namespace) -> int:
    import torch

    from boneage.network.checkpoint import save_checkpoint
    from boneage.network.model import ModelConfig, build_model
    from boneage.prepare.stages import PreprocessConfig

    torch.manual_seed(args.seed)
    model = build_model(ModelConfig(backbone=args.backbone, pretrained=args.pretrained))
    version = save_checkpoint(args.out, model, PreprocessConfig(), {"trained": False, "seed": args.seed})
    print(f"wrote untrained checkpoint {args.out} ({version}); its predictions are meaningless until trained")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from boneage.clinical.intervals import IntervalMethod
    from boneage.predict.predictor import default_model_uri
    from boneage.train.calibration import CalibrationScoring, run_calibration

    method = IntervalMethod(level=args.level, eps=args.eps, bands=args.bands, band_method=args.band_method,
                            recalibrate=args.recalibrate, seed=args.seed)
    cal = run_calibration(args.model or default_model_uri(), args.data, args.out, method,
                          val_fraction=args.val_fraction,
                          scoring=CalibrationScoring(tta=args.tta, device=args.device, batch_size=args.batch_size))
    halves = cal.coverage["halves"]
    print(f"calibrated on {cal.n} images ({cal.method}, {cal.tta} test-time variants): q = {cal.q:.3f} for a "
          f"{cal.level:.0%} interval (pooled; bands: {cal.band_method if cal.bands else 'none'})")
    if cal.recalibrate:
        print(f"  recalibrated bone age = {cal.recalibrate[0]:.4f} x prediction {cal.recalibrate[1]:+.2f} months")
    for band in cal.bands:
        if band["pooled"]:
            source = "too few films: the pooled q"
        elif "scale" in band:
            source = f"{band['scale']:.2f} x {band['q'] / band['scale']:.3f}, the quantile of scaled residuals"
        else:
            source = "its own q"
        print(f"  band {band['band']} months: {band['n']} images, q = {band['q']:.3f} ({source})")
    for i, half in enumerate(halves, 1):
        print(f"  cross-fit {i}: calibrated on {half['calibrated_on']}, measured on {half['measured_on']}: "
              f"coverage {half['coverage']:.1%}, mean width {half['mean_width_months']:.1f} months")
    for band in cal.coverage["by_band"]:
        measured = ("no images" if not band["measured_on"] else
                    f"coverage {band['coverage']:.1%}, mean width {band['mean_width_months']:.1f} months")
        print(f"  predicted {band['band']} months, {band['measured_on']} images not calibrated on: {measured}")
    print(f"measured coverage on images not calibrated on: {cal.coverage['coverage']:.1%} (target {cal.level:.0%}); "
          f"wrote {args.out}")
    return 0


def _bands(value: str) -> list[float] | None:
    """``--bands 60,120,168`` (months of predicted bone age), or ``none`` for one pooled quantile."""
    if value.strip().lower() == "none":
        return None
    edges = [float(part) for part in value.split(",") if part.strip()]
    if not edges or any(b <= a for a, b in zip(edges, edges[1:], strict=False)) or edges[0] <= 0:
        raise argparse.ArgumentTypeError("--bands must be increasing positive months, e.g. 60,120,168, or none")
    return edges


def _cmd_report(args: argparse.Namespace) -> int:
    from boneage.predict.predictor import Predictor
    from boneage.predict.report import write_report

    print(RESEARCH_USE_ONLY, file=sys.stderr, flush=True)
    predictor = Predictor.load(args.model, device=args.device, tta=args.tta, reference=args.reference,
                               score_anyway=args.score_anyway)
    row = write_report(predictor, args.image, args.out, sex=args.sex, chronological_age_months=args.chronological_age)
    if row.error:
        print(f"{args.image}: ERROR {row.error} (the report says so)", file=sys.stderr)
        return 1
    if row.bone_age_months is None:
        print(f"wrote {args.out}: REFUSED, {row.quality['rejection']}: {row.quality['rejection_detail']}")
        return 0
    print(f"wrote {args.out}: bone age {row.bone_age_months:.1f} months{_clinical_text(row)}")
    return 0


def _cmd_bootstrap_masks(args: argparse.Namespace) -> int:
    from boneage.train.segmenter import bootstrap_masks, read_exclusions

    exclude = read_exclusions(args.exclude) if args.exclude else {}
    counts = bootstrap_masks(args.images, args.out, args.montage, exclude)
    print(f"{counts['accepted']} mask(s) accepted, {counts['rejected']} rejected, {counts['failed']} unreadable "
          f"of {counts['total']}; verdicts in {args.out.rstrip('/')}/quality.csv")
    if args.montage:
        print(f"look at {args.montage} (and its -rejected twin) before training on these masks")
    return 0


def _cmd_train_segmenter(args: argparse.Namespace) -> int:
    from boneage.prepare.segmentation.unet import UNetConfig, UNetSegmenter
    from boneage.train.segmenter import MaskedFilms, UNetRecipe, train_segmenter

    init = UNetSegmenter.load(args.init) if args.init else None
    config = init.config if init else UNetConfig(base_channels=args.base_channels, work_size=args.work_size)
    films = MaskedFilms(args.images, args.masks, mask_source=args.mask_source, check_masks=args.check or ())
    recipe = UNetRecipe(epochs=args.epochs, per_image=args.patches_per_image, batch_size=args.batch_size, lr=args.lr,
                        seed=args.seed)
    meta = train_segmenter(films, args.out, config, recipe, device=args.device, init=init.model if init else None)
    print(f"wrote {args.out}: trained on {meta['trained_on']['images']} images in {meta['train_seconds']:.0f} s, "
          f"final loss {meta['loss_per_epoch'][-1]:.4f}")
    for fid, value in meta["dice_on_held_out_reference_masks"].items():
        print(f"  Dice against the reference mask of {fid}: {value:.3f}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from boneage.predict.predictor import default_model_uri
    from boneage.train.evaluation import run_evaluation

    report = run_evaluation(args.model or default_model_uri(), args.data, args.out, device=args.device, val_fraction=args.val_fraction,
                            labels_uri=args.labels)
    o = report["overall"]
    print(f"{o['n']} images: MAE {o['mae']:.2f} months, RMSE {o['rmse']:.2f}, R^2 {o['r2'] if o['r2'] is None else round(o['r2'], 3)}, "
          f"within +-12 months {100 * o['within_12m']:.0f}% (predicting the mean: MAE {report['mean_predictor_mae']:.2f})")
    for key, label in (("labelled_without_file", "labelled ids without a film"), ("failed", "films not scored")):
        items = report.get("left_out", {}).get(key)
        if items:
            print(f"{len(items)} {label}: {', '.join(list(items)[:10])}")
    print(f"metrics.json, predictions.csv, plots and report.html in {args.out}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.print_config:  # the packaged config, to copy and edit (without loading Ray)
        from importlib.resources import files

        print(files("boneage.serving").joinpath("serve_config.yaml").read_text(), end="")
        return 0
    import logging
    import os

    print(f"boneage serve: starting the endpoint ({args.config or 'the packaged serve_config.yaml'})...", flush=True)
    import ray

    from boneage.serving.runner import run_config

    code = run_config(args.config, model=args.model, host=args.host, port=args.port)
    # Serve and Ray stopped, the output flushed: nothing is left but the interpreter's teardown of torch, Ray
    # and FastAPI, which took 4-11 s of the Ctrl-C on the busy 2-core machine.
    ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _clinical_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chronological-age", type=options.months, metavar="MONTHS",
                   help="chronological age in months (for every image; else from DICOM birth and study dates)")
    p.add_argument("--tta", type=_tta, default=None, metavar="N|auto",
                   help="test-time variants per image: auto (default: as the model's calibration, none without "
                        "one), or a number (0 = off; an interval needs the calibration's number)")
    p.add_argument("--reference", help="CSV of bone-age SDs by age and sex (default: $BONEAGE_REFERENCE, else the "
                   "shipped Greulich-Pyle / Brush Foundation table)")
    p.add_argument("--score-anyway", action="store_true", help="a bone age even for a refused film (not a hand, no "
                   "hand found), beside the reason (default: withheld)")


def _predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files, folders (their images, as `score` lists them) or fsspec "
                   "URLs (s3://, memory://, file://)")
    options.add_sex(p, "M or F for every image; DICOM files may carry it in their header instead")
    options.add_model(p)
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    options.add_device(p)
    p.add_argument("--batch-size", type=options.positive_int, default=16, help="images per model call")
    p.add_argument("--save-preprocessed", metavar="DIR", help="also write each preprocessed image (the model's "
                   "input: 256x256 for hires, 112x112 for rsna100) as DIR/<id>.png")
    _clinical_arguments(p)
    p.add_argument("--heatmap", metavar="DIR", help="also write a Grad-CAM overlay PNG per image (<id>_heatmap.png)")
    options.add_threads(p)


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", help="image path or URL (PNG, JPEG, DICOM)")
    options.add_sex(p, "M or F (a DICOM may carry it in its header)")
    p.add_argument("--out", required=True, type=_report_path, help="FILE.pdf or FILE.html")
    options.add_model(p)
    options.add_device(p)
    _clinical_arguments(p)
    options.add_threads(p)


def _calibrate_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p, "the model to calibrate: ")
    p.add_argument("--data", required=True, help="labelled preprocessed cache (boneage preprocess --out)")
    p.add_argument("--out", required=True, help="where to write the calibrated checkpoint")
    p.add_argument("--val-fraction", type=options.fraction, help="use only the images training held out with this "
                   "--val-fraction (same id hash); leave out for a cache held out as a whole")
    p.add_argument("--level", type=options.fraction, default=DEFAULT_LEVEL, help="interval coverage to calibrate for")
    p.add_argument("--tta", type=options.non_negative_int, help="test-time variants per image (default 4 on CPU, 8 "
                   "on GPU; 0: plain residuals, no TTA)")
    p.add_argument("--eps", type=float, default=DEFAULT_EPS, help="months added to the TTA spread")
    options.add_device(p)
    p.add_argument("--batch-size", type=options.positive_int, default=16, help="images per model call")
    p.add_argument("--seed", type=int, default=0, help="of the random halves used to measure coverage")
    p.add_argument("--bands", type=_bands, default=list(DEFAULT_BANDS),
                   help="edges (months of predicted bone age) of the bands, each with its own width "
                        f"(default {','.join(f'{b:g}' for b in DEFAULT_BANDS)}); none: one pooled quantile")
    p.add_argument("--band-method", choices=BAND_METHODS, default=BAND_METHODS[0],
                   help="scale: each band's residuals divided by its mean residual, one quantile over all films "
                        "(narrower where bands have few films); quantile: each band its own quantile, the level "
                        f"guaranteed within every band (default {BAND_METHODS[0]})")
    p.add_argument("--recalibrate", nargs="?", const="inverse", choices=RECALIBRATIONS,
                   help="also fit and store a linear recalibration of the bone age on these images, applied "
                        "before the interval: inverse (the value when none is given; unbiased at every true age) "
                        "or least-squares (smallest mean error, keeps the pull towards the mean age) "
                        "(default: none)")
    options.add_threads(p)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    options.add_model(p)
    p.add_argument("--data", required=True, help="preprocessed cache (boneage preprocess --out) with labels; or, with "
                   "--labels, a folder of original films scored as `boneage predict` scores them")
    p.add_argument("--labels", help="RSNA-format CSV (id,boneage,male) of the films in --data")
    p.add_argument("--out", required=True, help="folder for metrics.json, predictions.csv, PNG plots, report")
    p.add_argument("--val-fraction", type=options.fraction,
                   help="only the ids that 'boneage train --val-fraction F' held out (the same stable split)")
    options.add_device(p)
    options.add_threads(p)


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="Ray Serve config (default: the serve_config.yaml shipped in the package)")
    p.add_argument("--print-config", action="store_true", help="print the shipped config (a start for your own) and exit")
    p.add_argument("--model", help="checkpoint path or URL, over the config's user_config.model; 'untrained' for a random network")
    p.add_argument("--host", help="listen address, over the config's http_options.host (127.0.0.1)")
    p.add_argument("--port", type=int, help="port, over the config's http_options.port (8000)")


def _bootstrap_masks_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files, folders or URL prefixes")
    p.add_argument("--out", required=True, help="folder for <id>.png masks and quality.csv")
    p.add_argument("--montage", help="PNG of accepted masks outlined on their images (and a -rejected twin)")
    p.add_argument("--exclude", help="CSV id,reason of masks rejected on review after looking at the montage")


def _train_segmenter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", nargs="+", required=True, help="image files, folders or URL prefixes")
    p.add_argument("--masks", required=True, help="folder of binary PNG masks named like the images (<stem>.png)")
    p.add_argument("--out", required=True, help="where to write the weights file (path or URL)")
    p.add_argument("--init", help="start from these weights (fine-tune) instead of random ones")
    p.add_argument("--epochs", type=options.positive_int, default=50, help="passes over the images")
    p.add_argument("--patches-per-image", type=options.positive_int, default=8,
                   help="random 128x128 patches per image per epoch")
    p.add_argument("--batch-size", type=options.positive_int, default=32, help="patches per step")
    p.add_argument("--lr", type=options.positive_float, default=1e-3, help="learning rate (Adam)")
    p.add_argument("--seed", type=int, default=0, help="random seed of weights and patches")
    p.add_argument("--base-channels", type=options.positive_int, default=8, help="width of the first U-Net level")
    p.add_argument("--work-size", type=options.positive_int, default=256, help="long side (px) at which the U-Net runs")
    options.add_device(p)
    p.add_argument("--mask-source", default="user-supplied masks", help="recorded in the weights: where masks came from")
    p.add_argument("--check", nargs=2, action="append", metavar=("IMAGE", "MASK"),
                   help="a reference mask never trained on; its Dice is recorded in the weights (repeatable)")


def _init_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="checkpoint path or URL")
    p.add_argument("--backbone", default="resnet34", help="network: resnet34, resnet50, efficientnet_v2_s, "
                   "inception_v3 (torchvision), tf_efficientnet_lite0/1/2 (timm)")
    p.add_argument("--pretrained", help="'imagenet' or a path/URL to torchvision backbone weights (default: random)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights")


class Command(NamedTuple):
    """One ``boneage`` command: its help line, one example, its options (added when the parser is built,
    from modules that import nothing heavy), and what runs it: ``"module:function"``, imported only when
    the command runs, so torch, Ray, pyarrow and pydicom load for that command alone. (A NamedTuple: a
    dataclass would import ``inspect`` before ``--version`` answers.)"""

    name: str
    help: str
    example: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: str
    service: bool = False  # a long-running service: each log line with its time

    def __call__(self, args: argparse.Namespace) -> int:
        module, function = self.run.split(":")
        return getattr(importlib.import_module(module), function)(args)


# Every command, in the order `boneage --help` lists them. A new command is one line here.
COMMANDS = (
    Command("predict", "bone age of one or more radiographs (PNG, JPEG, DICOM; files, folders, URLs)",
            "boneage predict hand.png scans/ --sex F --json", _predict_arguments, "boneage.cli:_cmd_predict"),
    Command("report", "one-page PDF or HTML report of one radiograph for a clinician",
            "boneage report hand.png --sex F --chronological-age 120 --out hand.pdf", _report_arguments,
            "boneage.cli:_cmd_report"),
    Command("calibrate", "prediction intervals: conformal calibration on labelled held-out images",
            "boneage calibrate --model my_model.pt --data cache/val --out my_model_calibrated.pt",
            _calibrate_arguments, "boneage.cli:_cmd_calibrate"),
    Command("preprocess", "Ray Data job: preprocess an archive into a Parquet training cache",
            "boneage preprocess films/ --labels labels.csv --config hires --out cache/", options.preprocess_arguments,
            "boneage.jobs.preprocess:run_from_args"),
    Command("score", "Ray Data job: bone age of every radiograph of an archive, to Parquet or CSV",
            "boneage score archive/ --sex F --format csv --out results/", options.score_arguments,
            "boneage.jobs.score:run_from_args"),
    Command("listen", "DICOM receiver (C-STORE): score each film sent, send its report onward",
            "boneage listen --port 11112 --destination dicomweb+http://pacs:8042/dicom-web", options.listen_arguments,
            "boneage.jobs.listen:run_from_args", service=True),
    Command("train", "Ray Train job: train the bone-age network from a preprocessed cache",
            "boneage train --data cache/ --val-fraction 0.1 --epochs 30 --out model.pt", options.train_arguments,
            "boneage.jobs.train:run_from_args"),
    Command("evaluate", "a model's metrics, plots and report on a labelled preprocessed cache, or on labelled "
            "original films (--labels)", "boneage evaluate --data films/ --labels labels.csv --out evaluation/",
            _evaluate_arguments, "boneage.cli:_cmd_evaluate"),
    Command("serve", "Ray Serve: the HTTP endpoint and upload page (what `serve run CONFIG` does); one line when "
            "ready, Ray's own logs with boneage --verbose serve; Ctrl-C stops it", "boneage serve --port 8000",
            _serve_arguments, "boneage.cli:_cmd_serve"),
    Command("bootstrap-masks", "classical hand masks, quality-checked, to train the U-Net on",
            "boneage bootstrap-masks films/ --out masks/ --montage masks.png", _bootstrap_masks_arguments,
            "boneage.cli:_cmd_bootstrap_masks"),
    Command("train-segmenter", "train the U-Net hand segmenter on images and binary masks",
            "boneage train-segmenter --images films/ --masks masks/ --out unet.pt", _train_segmenter_arguments,
            "boneage.cli:_cmd_train_segmenter"),
    Command("init-checkpoint", "write a randomly initialised checkpoint (to try the pipeline)",
            "boneage init-checkpoint --out untrained.pt", _init_checkpoint_arguments,
            "boneage.cli:_cmd_init_checkpoint"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boneage", description="Bone age from hand radiographs.",
                                     epilog="example:\n  boneage predict hand.png scans/ --sex F\n\n"
                                            "`boneage COMMAND --help` shows a command's options and an example.",
                                     formatter_class=options.HelpFormatter)
    parser.add_argument("--version", action="version", version=f"boneage {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:  # each with its defaults shown and one example under its options
        p = sub.add_parser(command.name, help=command.help, epilog=f"example:\n  {command.example}",
                           description=f"{command.help[0].upper()}{command.help[1:]}.",
                           formatter_class=options.HelpFormatter)
        command.arguments(p)
        p.set_defaults(func=command)
    return parser


def _report_path(value: str) -> str:
    if not value.lower().endswith((".pdf", ".html", ".htm")):
        raise argparse.ArgumentTypeError(f"must end in .pdf or .html, not {value!r}")
    return value


def _prepare(args: argparse.Namespace) -> None:
    """Before any model loads: a one-process command pins its threads (``--threads``), and a ``--device``
    that this machine lacks is one line of error, not a traceback from deep in torch."""
    if "threads" in vars(args) and getattr(args, "no_ray", True):  # score and preprocess: with --no-ray only
        pin_threads(args.threads)
    if getattr(args, "device", "auto") != "auto":
        select_device(args.device)


def main(argv: Sequence[str] | None = None) -> int:
    """``boneage COMMAND ...``, also ``python -m boneage`` (so ``ray job submit -- python -m boneage score``):
    the one start of every command. Logging is set up here, once; an error the package raises on purpose is
    one line and an exit code, not a traceback."""
    args = build_parser().parse_args(argv)
    # The project at INFO, others at WARNING; -v (or $BONEAGE_VERBOSE): everything, Ray included
    setup_logging(args.verbose or None, timestamps=args.func.service)
    try:
        _prepare(args)
        return args.func(args)
    except (BoneAgeError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except OSError as exc:  # an output that cannot be written (read-only, full disk, a file in the way)
        print(f"error: {os_error_text(exc)}", file=sys.stderr)
        return exit_code(exc)
