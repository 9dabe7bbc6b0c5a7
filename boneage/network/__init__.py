"""Stage 3, the network: backbones, the bone-age model (image + sex -> months) and its one-file checkpoint."""
