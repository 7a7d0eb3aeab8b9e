"""The latent-visual-token variant (GAP): the model (``.model``) and its place in the pipeline (``.variant``).

Capture through latents is the model's own [`capture`][attrib.variants.base.VariantModel.capture]
(the ``latent`` key part); [`attrib.analysis.latent.latent_share`][attrib.analysis.latent.latent_share] turns it into a
share.
"""

from attrib.variants.latent.model import (
    LATENT,
    LATENT_CLOSE,
    LATENT_OPEN,
    LATENT_TOKENS,
    MODES,
    LatentGeneration,
    LatentModel,
    LatentOutput,
    latent_norm_stats,
    require_latent,
)
from attrib.variants.latent.variant import LatentVariant, latent_norm_states, register

__all__ = [
    "LATENT",
    "LATENT_CLOSE",
    "LATENT_OPEN",
    "LATENT_TOKENS",
    "MODES",
    "LatentGeneration",
    "LatentModel",
    "LatentOutput",
    "LatentVariant",
    "latent_norm_states",
    "latent_norm_stats",
    "register",
    "require_latent",
]
