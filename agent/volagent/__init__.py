"""volagent: keeps a rack's shared filesystem mounted and container volume directories ready."""

__version__ = "0.7.0"
