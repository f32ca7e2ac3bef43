"""AlexNet as published (Krizhevsky, Sutskever, Hinton 2012), made into fast software."""

from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]
