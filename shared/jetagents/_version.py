"""The library's version, apart from ``__init__`` so that modules can read it without an
import cycle through the package (ADR 0040)."""

__version__ = "0.1.0"
