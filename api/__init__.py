"""vidmem: api."""
