"""Whether a bone age may be given for a film: the reasons found, and which of them refuse it.

A refusal means the number would be meaningless (not a hand, no hand found): by default the bone age
is withheld and the reason given. A warning keeps the number and carries the flag (a dim film, a
mirrored film that was turned back, a chronological age outside the reference). Every output (predict,
score, the endpoint, the report) and the training cache read the same fields, built here.
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """What the verdict allows: ``refused`` withholds the bone age, ``warning`` keeps it with a flag."""

    OK = "ok"
    WARNING = "warning"
    REFUSED = "refused"


class Reason(StrEnum):
    """Every reason the verdict knows, refusals first; each is also a boolean of the quality record."""

    NOT_A_HAND = "not_a_hand"
    NO_HAND_FOUND = "no_hand_found"
    FLIPPED_OR_RIGHT_HAND = "flipped_or_right_hand"
    ROTATED = "rotated"
    LOW_CONTRAST = "low_contrast"
    AGE_OUT_OF_RANGE = "age_out_of_range"

    @property
    def refuses(self) -> bool:
        return self in REFUSALS


REFUSALS = (Reason.NOT_A_HAND, Reason.NO_HAND_FOUND)
WARNINGS = tuple(reason for reason in Reason if reason not in REFUSALS)
# Chronological ages a bone age can be compared with: birth to 19 years (the references end by then).
AGE_RANGE_MONTHS = (0.0, 228.0)


def age_out_of_range(age_months: float | None) -> str | None:
    """Why ``age_months`` cannot be compared with a bone age, or None when it can (or is unknown)."""
    if age_months is None:
        return None
    lo, hi = AGE_RANGE_MONTHS
    if not lo <= age_months <= hi:
        return (f"chronological age {age_months:.1f} months is outside {lo:.0f}-{hi:.0f} months: "
                "no comparison, SDS or category")
    return None


def status(findings: dict[str, str]) -> Verdict:
    """``refused``, ``warning`` or ``ok``."""
    if any(reason in REFUSALS for reason in findings):
        return Verdict.REFUSED
    return Verdict.WARNING if findings else Verdict.OK


def quality_fields(findings: dict[str, str], measures: dict[str, float | str | None]) -> dict:
    """The flat quality record of one film: its measures, the verdict, the reasons (comma-separated, refusals
    first), one boolean per known reason, and ``rejection``: the refusing reasons, None unless refused."""
    ordered = [r.value for r in Reason if r in findings] + [r for r in findings if r not in set(Reason)]
    refusing = [r for r in ordered if r in REFUSALS]
    return {
        **measures,
        "verdict": status(findings).value,
        "reasons": ",".join(ordered) or None,
        "detail": "; ".join(f"{r}: {findings[r]}" for r in ordered) or None,
        **{reason.value: reason in findings for reason in Reason},
        "rejection": ",".join(refusing) or None,
        "rejection_detail": "; ".join(findings[r] for r in refusing) or None,
    }
