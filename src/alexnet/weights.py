"""``alexnet.weights``, as scripts outside the package import it: the weights reader lives in ``alexnet.io.weights``."""

from .io.weights import Loaded, load_weights, model_from_state

__all__ = ["Loaded", "load_weights", "model_from_state"]
