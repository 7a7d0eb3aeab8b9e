"""Research variants behind one protocol: the registry ([`attrib.variants.registry`][attrib.variants.registry]) and
their shared base.

- [`attrib.variants.registry`][attrib.variants.registry]: the [`Variant`][attrib.variants.registry.Variant] protocol,
the registry,
  and the plain-model variant; the only part of this package the core imports;
- [`attrib.variants.base`][attrib.variants.base]: ``VariantModel``, the decode loop and the
  checkpoint layout both research variants share;
- [`attrib.variants.pointcopy`][attrib.variants.pointcopy]: v1 point-and-copy (copy tokens alias image tokens);
- [`attrib.variants.latent`][attrib.variants.latent]: latent visual tokens (GAP).

Each research variant registers itself (its model kind with [`attrib.models`][attrib.models],
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
