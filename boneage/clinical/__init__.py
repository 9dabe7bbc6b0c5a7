"""Stage 4, clinical outputs: test-time variants and conformal intervals, the reference (SDS, category),
and the Grad-CAM heatmap."""
