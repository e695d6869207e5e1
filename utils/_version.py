"""The library's version, readable by every layer without importing the package facade."""

__version__ = "3.3.0"
