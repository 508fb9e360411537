"""vidmem: vidmem."""
