"""Every compression method, one module each; importing this package registers them all."""

from compression.methods import none, uniform  # noqa: F401
