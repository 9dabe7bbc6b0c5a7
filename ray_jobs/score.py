"""``python -m ray_jobs.score ARGS`` is ``python -m boneage score ARGS``: an alias kept for the design card's folder."""

import sys

from boneage.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
