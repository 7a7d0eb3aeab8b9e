"""Research variants behind one protocol: the registry (:mod:`attrib.variants.registry`) and their shared base.

- :mod:`attrib.variants.registry`: the :class:`Variant` protocol, the registry,
  and the plain-model variant; the only part of this package the core imports;
- :mod:`attrib.variants.base`: :class:`VariantModel`, the decode loop and the
  checkpoint layout both research variants share;
- :mod:`attrib.variants.pointcopy`: v1 point-and-copy (copy tokens alias image tokens);
- :mod:`attrib.variants.latent`: latent visual tokens (GAP).

Each research variant registers itself (its model kind with :mod:`attrib.models`,
its pipeline strategy here) from its package's ``register()``, called through
the ``attrib.plugins`` entry points.
"""

from attrib.variants.registry import (
    PLAIN,
    VARIANTS,
    AblationRequest,
    CaptureRequest,
    PlainVariant,
    ResearchVariant,
    StopFlag,
    Variant,
    get_variant,
    register_variant,
)

__all__ = [
    "PLAIN",
    "VARIANTS",
    "AblationRequest",
    "CaptureRequest",
    "PlainVariant",
    "ResearchVariant",
    "StopFlag",
    "Variant",
    "get_variant",
    "register_variant",
]
