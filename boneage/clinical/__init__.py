"""Stage 4, clinical outputs: test-time variants and conformal intervals, the reference (SDS, category),
and the Grad-CAM heatmap."""

# Shown by every output a person reads (the command line, JSON, the web page, the report, the DICOM SR).
RESEARCH_USE_ONLY = "For research use only: not for clinical decisions."
