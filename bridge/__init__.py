"""The in-training side of BIDViz: `Bridge`, hyperparameters, metric hooks."""

from .core import Bridge

__all__ = ["Bridge"]
