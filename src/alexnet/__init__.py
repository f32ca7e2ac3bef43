"""AlexNet as published (Krizhevsky, Sutskever, Hinton 2012), made into fast software."""

from .models import create_model, list_models

__version__ = "0.2.0"  # the one home of the version: pyproject.toml reads it (CHANGELOG.md)
__all__ = ["create_model", "list_models", "__version__"]
