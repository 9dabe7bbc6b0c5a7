"""The one prediction path: the CLI, bulk scoring and the endpoint all go through ``Predictor``.

A ``Predictor`` owns a loaded checkpoint; it preprocesses with the checkpoint's own config and
predicts batches on CPU or GPU. Per-file failures become ``Prediction.error``, never exceptions,
so one corrupt file does not stop the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from boneage.checkpoint import Checkpoint, load_checkpoint
from boneage.devices import select_device
from boneage.errors import BoneAgeError, ImageReadError
from boneage.io import Radiograph, parse_sex, read_image
from boneage.model import ModelConfig, build_model
from boneage.preprocessing import PreprocessConfig, PreprocessResult, preprocess, to_unit_float
from boneage.storage import file_id

log = logging.getLogger(__name__)
MODEL_ENV = "BONEAGE_MODEL"
UNTRAINED_WARNING = (
    "UNTRAINED MODEL: no trained checkpoint was given (--model or $BONEAGE_MODEL), so a randomly "
    "initialised network is used. Its bone ages are meaningless; use them only to try the pipeline."
)


@dataclass
class Prediction:
    """One row of output. ``error`` is None on success, else why the file could not be scored."""

    path: str
    id: str
    sex: str | None = None
    bone_age_months: float | None = None
    bone_age_years_months: str | None = None
    quality: dict | None = None
    model_version: str | None = None
    model_trained: bool | None = None
    error: str | None = None
    error_code: str | None = None
    chronological_age_months: float | None = None
    extra: dict = field(default_factory=dict)
    preprocessed: np.ndarray | None = field(default=None, repr=False)  # the model's input, when asked for

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("preprocessed")
        data.update(data.pop("extra"))
        return data


def years_months(months: float) -> str:
    """124.4 -> "10 y 4 m": how radiologists write bone age."""
    total = int(round(months))
    sign = "-" if total < 0 else ""
    years, rest = divmod(abs(total), 12)
    return f"{sign}{years} y {rest} m"


def untrained_checkpoint(model_config: ModelConfig | None = None, preprocess_config: PreprocessConfig | None = None,
                         seed: int = 0) -> Checkpoint:
    """A deterministic random-init network: lets the whole pipeline run before any training."""
    torch.manual_seed(seed)
    model = build_model(model_config or ModelConfig())
    model.eval()
    return Checkpoint(model=model, preprocess=preprocess_config or PreprocessConfig(),
                      metadata={"trained": False, "seed": seed}, version=f"untrained-seed{seed}")


class Predictor:
    """Load once, predict many. Thread-compatible for reading; not meant to be shared across processes."""

    def __init__(self, checkpoint: Checkpoint, device: str | None = None, batch_size: int = 16):
        self.checkpoint = checkpoint
        self.device = select_device(device)
        self.batch_size = batch_size
        self.model = checkpoint.model.to(self.device).eval()
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        if not checkpoint.trained:
            log.warning(UNTRAINED_WARNING)

    @classmethod
    def load(cls, uri: str | None = None, device: str | None = None, batch_size: int = 16) -> Predictor:
        """From ``uri``, else ``$BONEAGE_MODEL``, else an untrained network (with a loud warning)."""
        uri = uri or os.environ.get(MODEL_ENV) or None
        checkpoint = load_checkpoint(uri) if uri else untrained_checkpoint()
        return cls(checkpoint, device=device, batch_size=batch_size)

    @property
    def version(self) -> str:
        return self.checkpoint.version

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.checkpoint.preprocess

    def preprocess(self, pixels: np.ndarray) -> PreprocessResult:
        return preprocess(pixels, self.checkpoint.preprocess)

    @torch.inference_mode()
    def predict_arrays(self, images: np.ndarray | Sequence[np.ndarray], male: Sequence[float]) -> np.ndarray:
        """Bone ages (months) for preprocessed uint8 images (N x S x S) and sex (1 male, 0 female)."""
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        out = np.empty(len(images), dtype=np.float32)
        male_arr = np.asarray(male, dtype=np.float32).reshape(-1)
        if len(male_arr) != len(images):
            raise ValueError(f"{len(images)} images but {len(male_arr)} sex values")
        cuda = self.device.type == "cuda"
        for start in range(0, len(images), self.batch_size):
            chunk = to_unit_float(images[start : start + self.batch_size])[:, None]
            x = torch.from_numpy(chunk)
            s = torch.from_numpy(male_arr[start : start + self.batch_size])
            if cuda:
                x = x.pin_memory().to(self.device, non_blocking=True).to(memory_format=torch.channels_last)
                s = s.to(self.device, non_blocking=True)
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=cuda):
                y = self.model(x, s)
            out[start : start + len(chunk)] = y.float().cpu().numpy()
        return out

    def predict_radiographs(self, radiographs: Sequence[Radiograph], sexes: Sequence[str | None],
                            keep_preprocessed: bool = False) -> list[Prediction]:
        """Preprocess and predict decoded radiographs; sex from the argument, else the DICOM header.

        ``keep_preprocessed`` keeps each model input image in ``Prediction.preprocessed``.
        """
        rows, ready, arrays, male = [], [], [], []
        for rad, given in zip(radiographs, sexes, strict=True):
            row = self._row(rad.path)
            row.chronological_age_months = rad.chronological_age_months
            try:
                row.sex = parse_sex(given) or rad.sex
                if row.sex is None:
                    raise BoneAgeError("sex unknown: give it (M or F); the image header does not say")
                result = self.preprocess(rad.pixels)
            except (BoneAgeError, ValueError) as exc:
                row.error, row.error_code = str(exc), "bad_input"
            else:
                row.quality = result.quality_flags()
                if keep_preprocessed:
                    row.preprocessed = result.image
                ready.append(row)
                arrays.append(result.image)
                male.append(1.0 if row.sex == "M" else 0.0)
            rows.append(row)
        if arrays:
            for row, months in zip(ready, self.predict_arrays(np.stack(arrays), male), strict=True):
                row.bone_age_months = round(float(months), 2)
                row.bone_age_years_months = years_months(float(months))
        return rows

    def predict_files(self, uris: Iterable[str], sex: str | None = None,
                      keep_preprocessed: bool = False) -> list[Prediction]:
        """Read, preprocess and predict files batch by batch; unreadable files become error rows."""
        rows: list[Prediction] = []
        pending: list[tuple[int, Radiograph]] = []

        def flush() -> None:
            done = self.predict_radiographs([r for _, r in pending], [sex] * len(pending), keep_preprocessed)
            for (index, _), row in zip(pending, done, strict=True):
                rows[index] = row
            pending.clear()

        for uri in uris:
            rows.append(self._row(uri))
            try:
                pending.append((len(rows) - 1, read_image(uri)))
            except ImageReadError as exc:
                rows[-1].error, rows[-1].error_code = str(exc), exc.code
            if len(pending) >= self.batch_size:
                flush()
        if pending:
            flush()
        return rows

    def _row(self, path: str) -> Prediction:
        return Prediction(path=path, id=file_id(path), model_version=self.version, model_trained=self.checkpoint.trained)
