"""vidmem: store."""
