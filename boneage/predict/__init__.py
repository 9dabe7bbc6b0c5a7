"""Stage 5, predicting: the one path from a film to a bone age (``Predictor``), bulk scoring of an archive,
and the clinician's report."""
