"""vidmem: compression."""
