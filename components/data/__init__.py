"""Training-data set-up: ingest, versioning (DVC), validation (Great Expectations)."""
