"""The Ray jobs, as plain modules of the library: Ray Data preprocessing and bulk scoring, Ray Train
training. Thin wiring over the stages below; the ``boneage`` command table (cli.py) starts them."""
