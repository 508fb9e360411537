"""vidmem: bench."""
