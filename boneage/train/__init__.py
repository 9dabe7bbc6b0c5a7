"""Stage 6, training: building the cache, id splits, category weights, augmentation, the loop, metrics,
evaluation and interval calibration (and the U-Net's own training)."""
