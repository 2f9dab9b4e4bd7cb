"""Data in and out, without torch: manifests (rows in), wav files, and the report files (rows out)."""
