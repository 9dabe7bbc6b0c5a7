"""``boneage calibrate``: a model's predictions on labelled held-out images -> a copy of its checkpoint
with a conformal interval (the maths is ``boneage.clinical.intervals``; this is the command's run)."""

from __future__ import annotations

from dataclasses import dataclass

from boneage.clinical.intervals import Calibration, IntervalMethod, calibrate, default_tta
from boneage.progress import Progress


@dataclass(frozen=True)
class CalibrationScoring:
    """How the model's predictions on the calibration films are made: ``tta`` variants per image
    (None: 4 on CPU, 8 on GPU; 0 calibrates plain residuals, no TTA at prediction time), on ``device``
    (None: the best there is), ``batch_size`` films per model call."""

    tta: int | None = None
    device: str | None = None
    batch_size: int = 16


def run_calibration(model: str, data: str, out: str, method: IntervalMethod | None = None, *,
                    val_fraction: float | None = None, scoring: CalibrationScoring | None = None) -> Calibration:
    """``boneage calibrate``: the model's predictions on a labelled cache -> a calibrated copy at ``out``.

    ``val_fraction`` keeps only the images training held out with that fraction (the same id hash as
    ``boneage train``), so a model is never calibrated on images it was trained on; leave it out for
    a cache that is held out as a whole (e.g. the RSNA validation set). ``method``: the interval's level,
    bands and linear recalibration (:class:`boneage.clinical.intervals.IntervalMethod`).
    The model's own predictions are calibrated, never those of an earlier calibration's recalibration.
    """
    from boneage.network.checkpoint import save_checkpoint
    from boneage.predict.predictor import Predictor

    method = method or IntervalMethod()
    scoring = scoring or CalibrationScoring()
    predictor = Predictor.load(model, device=scoring.device, batch_size=scoring.batch_size, tta=0)
    tta = default_tta(predictor.device) if scoring.tta is None else scoring.tta
    keep = None
    described = data
    if val_fraction is not None:
        from boneage.train.data import in_validation as _in_validation

        def keep(ident: str) -> bool:
            return _in_validation(ident, val_fraction)

        described = f"{data} (the {val_fraction:.0%} held out of training by id hash)"
    from boneage.files.cache import labelled_images

    rows = labelled_images(data, keep, predictor.preprocess_config.config_hash(), purpose="calibrate on")
    true = rows.boneage
    with Progress(len(true), "calibrating") as bar:
        pred, spread = predictor.predict_arrays_tta(rows.images, rows.male, n=tta, on_batch=bar.update)
    calibration = calibrate(true, pred, spread, method, tta=tta if spread is not None else 0,
                            data=f"{described}: {len(true)} labelled images")
    checkpoint = predictor.checkpoint
    metadata = {**checkpoint.metadata, "calibration": calibration.to_dict(),
                "calibrated_from": predictor.version}
    save_checkpoint(out, checkpoint.model.cpu(), checkpoint.preprocess, metadata,
                    half=checkpoint.metadata.get("weights_dtype") == "float16")
    return calibration
