"""Entry point for ``python -m ray_jobs.train`` and ``ray job submit -- python -m ray_jobs.train``: the job
itself is ``boneage.jobs.train`` (the entry layer imports the library, never the reverse)."""

from __future__ import annotations

import sys

from boneage.jobs.train import add_arguments, main, run, run_from_args

__all__ = ["add_arguments", "main", "run", "run_from_args"]

if __name__ == "__main__":
    sys.exit(main())
