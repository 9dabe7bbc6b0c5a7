"""Aliases of the cluster entry points: ``ray job submit -- python -m ray_jobs.score ...`` runs exactly
``python -m boneage score ...`` (the same for ``preprocess`` and ``train``). Nothing else lives here."""
