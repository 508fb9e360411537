"""Errors raised by vlm/."""

from __future__ import annotations


class VLMError(Exception):
    """Base class of vlm errors."""


class ModelLoadError(VLMError):
    """A model folder or hub id could not be loaded; the message names the folder and the cause."""

    def __init__(self, location: str, reason: str) -> None:
        self.location = location
        self.reason = reason
        super().__init__(f"cannot load model from {location!r}: {reason}")


class UnsupportedModelError(ModelLoadError):
    """The folder holds a model type that no adapter handles; the message lists the choices."""
