"""vidmem: workers."""
