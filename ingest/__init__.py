"""vidmem: ingest."""
