"""``alexnet.tuning``, as scripts outside the package import it: the compute path's measured defaults live in
``alexnet.engine.tuning``."""

from .engine.tuning import auto_amp, compile_pays, keep_freed_memory, native_bf16, resolve

__all__ = ["auto_amp", "compile_pays", "keep_freed_memory", "native_bf16", "resolve"]
