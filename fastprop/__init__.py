"""fastprop: exact back-propagation for multilayer perceptrons, fused C kernels on the CPU."""
from . import ops, reference

__version__ = "0.1.0"
__all__ = ["ops", "reference"]
