"""han_worker: the worker and the control-plane supervisor of the han lab job system."""

__version__ = "0.1.0"
