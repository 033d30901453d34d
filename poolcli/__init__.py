"""poolcli: offline batch work with transformer pooling models."""

__version__ = "0.1.0"
