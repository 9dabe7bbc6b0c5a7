"""The endpoint's HTTP schema: what ``/openapi.json`` describes (clients must ignore fields they do not know)."""
# No ``from __future__ import annotations`` here: FastAPI and pydantic read the annotations at runtime.

from pydantic import BaseModel, ConfigDict

from boneage.clinical import RESEARCH_USE_ONLY


class Quality(BaseModel):
    """The film's verdict (boneage.prepare.verdict): ``refused`` withholds the bone age unless score_anyway."""

    verdict: str = "ok"
    reasons: str | None = None
    detail: str | None = None
    contrast: float | None = None
    hand_fraction: float | None = None
    p_hand: float | None = None
    hand_distance: float | None = None
    texture_distance: float | None = None
    orientation_corrected: int | None = None
    not_a_hand: bool = False
    no_hand_found: bool = False
    flipped_or_right_hand: bool = False
    rotated: bool = False
    low_contrast: bool = False
    age_out_of_range: bool = False
    rejection: str | None = None
    rejection_detail: str | None = None


class BoneAgeResult(BaseModel):
    """One scored radiograph. New clinical outputs arrive as new fields."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())
    bone_age_months: float | None  # null when the film is refused (quality.verdict), unless score_anyway
    bone_age_years_months: str | None
    sex: str
    chronological_age_months: float | None = None
    quality: Quality
    model_version: str
    model_trained: bool
    bone_age_interval_low: float | None = None
    bone_age_interval_high: float | None = None
    interval_level: float | None = None
    tta_sd_months: float | None = None
    bone_age_minus_chronological_months: float | None = None
    sds: float | None = None
    sds_low: float | None = None  # the interval's ends as SDS; null without an interval
    sds_high: float | None = None
    maturity_category: str | None = None  # delayed, average, advanced or indeterminate (from the SDS range)
    reference: str | None = None
    heatmap_png_base64: str | None = None
    warning: str | None = None
    notice: str = RESEARCH_USE_ONLY


class BatchItem(BaseModel):
    index: int
    filename: str | None = None
    status: int
    result: BoneAgeResult | None = None
    error_code: str | None = None
    error: str | None = None


class BatchResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    results: list[BatchItem]
    model_version: str


class ErrorBody(BaseModel):
    error_code: str
    error: str
