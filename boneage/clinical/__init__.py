"""Stage 4, clinical outputs: test-time variants and conformal intervals, the reference (SDS, category),
and the Grad-CAM heatmap.

The settings below live here, apart from :mod:`boneage.clinical.intervals` (which loads torch), so that the
command line can show them in its help without loading torch."""

# Shown by every output a person reads (the command line, JSON, the web page, the report, the DICOM SR).
RESEARCH_USE_ONLY = "For research use only: not for clinical decisions."
# Under every Grad-CAM heatmap a person reads (the heatmap file, the report, the web page).
HEATMAP_CAPTION = ("Grad-CAM over the model's input (the hand as cropped for the network): coloured where the "
                   "network's features moved this bone age most, red the strongest. It shows where the model looked; "
                   "it is not a finding and not a diagnosis.")

# Bands of the predicted bone age (months): under 5 years, 5-10, 10-14, 14 and over.
DEFAULT_BANDS = (60.0, 120.0, 168.0)
# How each band gets its width. "scale": the residuals are divided by their band's mean residual and one
# quantile is taken over all films, so every band's width follows its own error while the quantile comes
# from the whole set (149 rsna/val films, not the 20-31 of a smaller band, whose 90% quantile is its
# second- or third-largest residual); the level then holds over all ages approximately, not within each band.
# "quantile": each band its own quantile (Mondrian), which guarantees the level within every band but is
# wide where a band has few films. Measured on rsna/val: docs/model-card.md "How the interval gets its width".
BAND_METHODS = ("scale", "quantile")
MIN_BAND_FILMS = 10  # a band with fewer calibration films takes the pooled quantile ("scale")
DEFAULT_LEVEL = 0.9
DEFAULT_EPS = 1.0  # months: keeps the interval from collapsing when the TTA predictions agree exactly
CPU_TTA, GPU_TTA = 4, 8  # test-time variants per film when nobody says: each one is a full forward pass
# How the line from prediction to bone age is fitted. "inverse": the line of the prediction on the truth
# (pred = a * true + b), inverted: the estimate is then unbiased at every true age, which is what a
# clinician needs (a truly delayed child must not be pulled towards average). "least-squares": the line of
# the truth on the prediction: the smallest mean error, but it keeps the regression to the mean
# (young children still placed too old, old ones too young). Measured on rsna/val: README "Bias".
RECALIBRATIONS = ("inverse", "least-squares")
