"""pai-distil: distil small reasoning models from large teachers, as container jobs."""

__version__ = "0.1.0"
