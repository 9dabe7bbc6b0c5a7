"""Config dataclasses are rebuilt from saved dicts (checkpoints, caches, JSON files): a key the code
does not know means the file comes from another version, and guessing would silently change results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import TypeVar

T = TypeVar("T")


def check_known_keys(cls: type, data: Mapping, what: str) -> None:
    """Raise ValueError naming the keys of ``data`` that are not fields of the dataclass ``cls``."""
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} keys: {sorted(unknown)}")


def from_known_dict(cls: type[T], data: Mapping, what: str) -> T:
    """``cls(**data)`` after :func:`check_known_keys`: the one rule of every config (the dataclass's
    ``__post_init__`` then checks the values)."""
    check_known_keys(cls, data, what)
    return cls(**data)
