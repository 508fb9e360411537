"""vidmem: vlm."""
