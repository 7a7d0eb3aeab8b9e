"""attrib: faithful, streaming visual attribution for multimodal thinking models.

Importing the package has no side effects; submodules are imported on use.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
