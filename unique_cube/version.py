"""The package version (one place; the CLI, STAC items and model cards report it)."""

__version__ = "0.1.0"
