"""``python -m ray_jobs.preprocess ARGS`` is ``python -m boneage preprocess ARGS``: an alias kept for the design card's folder."""

import sys

from boneage.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
