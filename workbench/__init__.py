"""Shared core of the model-organism workbench: configs, model specs, run directories, hooks, CLI."""

__version__ = "0.1.0"
