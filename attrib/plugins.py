"""Plugins: packages that register model kinds, processors, named models, datasets and variants with the core.

The core never imports the benchmark ([`attrib.shapes`][attrib.shapes]) or a research
variant ([`attrib.variants.pointcopy`][attrib.variants.pointcopy],
[`attrib.variants.latent`][attrib.variants.latent]). They register themselves
through the ``attrib.plugins`` entry-point group (see
``pyproject.toml``), and the core's registries call [`load_plugins`][attrib.plugins.load_plugins] the
first time a lookup misses. A third-party package adds a model kind, a dataset
or a variant the same way, with an entry point of its own:

```toml
[project.entry-points."attrib.plugins"]
mything = "mypackage.attrib_plugin:register"
```

where ``register()`` calls the core's ``register_*`` functions.
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import entry_points

__all__ = ["GROUP", "load_plugins", "loaded_plugins"]

logger = logging.getLogger(__name__)

#: The entry-point group plugins register under.
GROUP = "attrib.plugins"
_LOCK = threading.RLock()
_LOADED: list[str] = []
_DONE = False


def load_plugins() -> list[str]:
    """Import every ``attrib.plugins`` entry point once and call it (thread-safe, idempotent).

    A plugin that fails to load is logged with its error and skipped, so one
    broken third-party package does not take attrib down.

    Returns:
        The names of the plugins loaded, in order.
    """
    global _DONE
    with _LOCK:
        if _DONE:
            return list(_LOADED)
        _DONE = True  # set first: a plugin's register() may look a registry up
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            try:
                ep.load()()
            except Exception as e:
                logger.warning("attrib plugin %r (%s) failed to load: %s: %s", ep.name, ep.value, type(e).__name__, e)
                continue
            _LOADED.append(ep.name)
        return list(_LOADED)


def loaded_plugins() -> list[str]:
    """The plugins loaded so far (loads them first)."""
    return load_plugins()
