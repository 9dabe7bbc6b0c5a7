"""Entry points for ``ray job submit``: thin layers over the ``boneage`` library."""
