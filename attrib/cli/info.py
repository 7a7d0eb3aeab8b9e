"""``attrib info``: versions, named models, registered variants, datasets and plugins."""

from __future__ import annotations

import argparse
import json
from typing import Any

from attrib.cli.console import out

__all__ = ["register"]


def _cmd_info(args: argparse.Namespace) -> int:
    import torch
    import transformers

    from attrib import __version__
    from attrib.collect.datasets import DATASETS
    from attrib.models.adapters import ADAPTERS
    from attrib.models.loading import NAMED_MODELS
    from attrib.plugins import load_plugins
    from attrib.regions.methods import REGION_METHODS
    from attrib.variants.registry import VARIANTS
    from estimators.baselines import BASELINES

    plugins = load_plugins()
    info = {
        "attrib": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.is_available(),
        "plugins": plugins,
        "bundled": sorted(NAMED_MODELS),
        "families": sorted(ADAPTERS),
        "variants": sorted(VARIANTS),
        "datasets": sorted(DATASETS),
        "region_methods": sorted(REGION_METHODS),
        "methods": sorted(BASELINES),
    }
    out.print_json(json.dumps(info))
    return 0


def register(sub: Any) -> None:
    """Add ``info``."""
    i = sub.add_parser("info", help="versions, bundled models and everything registered (families, variants, ...)")
    i.set_defaults(fn=_cmd_info)
