"""Stage 1, files: URIs (local, s3://, memory://), reading a film (PNG, JPEG, DICOM) into grey pixels,
model files, committed result parts and the training cache's Parquet shards."""
