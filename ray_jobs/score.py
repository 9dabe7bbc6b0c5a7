"""Entry point for ``python -m ray_jobs.score`` and ``ray job submit -- python -m ray_jobs.score``: the job
itself is ``boneage.jobs.score`` (the entry layer imports the library, never the reverse)."""

from __future__ import annotations

import sys

from boneage.jobs.score import add_arguments, main, run, run_from_args

__all__ = ["add_arguments", "main", "run", "run_from_args"]

if __name__ == "__main__":
    sys.exit(main())
