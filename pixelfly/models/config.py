"""What the model configs share: ``tiny()`` (a model that runs a forward/backward pass in
milliseconds, for tests) and ``small()`` (the defaults), each taking field overrides; and
for the image models the patch count."""
from __future__ import annotations

from typing import ClassVar

__all__ = ["SizedConfig", "ImageConfig"]


class SizedConfig:
    #: the fields ``tiny()`` changes
    TINY: ClassVar[dict] = {}

    @classmethod
    def tiny(cls, **overrides):
        """The tiny configuration (``TINY``), with ``overrides``."""
        return cls(**{**cls.TINY, **overrides})

    @classmethod
    def small(cls, **overrides):
        """The default configuration, with ``overrides``."""
        return cls(**overrides)


class ImageConfig(SizedConfig):
    """A config with ``image_size`` and ``patch_size`` fields."""

    @property
    def num_patches(self) -> int:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} not divisible by patch_size={self.patch_size}")
        return (self.image_size // self.patch_size) ** 2
