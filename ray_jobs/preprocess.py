"""Entry point for ``python -m ray_jobs.preprocess`` and ``ray job submit -- python -m ray_jobs.preprocess``: the job
itself is ``boneage.jobs.preprocess`` (the entry layer imports the library, never the reverse)."""

from __future__ import annotations

import sys

from boneage.jobs.preprocess import add_arguments, main, run, run_from_args

__all__ = ["add_arguments", "main", "run", "run_from_args"]

if __name__ == "__main__":
    sys.exit(main())
