"""``python -m ray_jobs.train ARGS`` is ``python -m boneage train ARGS``: an alias kept for the design card's folder."""

import sys

from boneage.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
