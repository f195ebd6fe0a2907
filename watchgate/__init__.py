"""Watchgate: a security and audit gateway for the Model Context Protocol."""

__version__ = "0.1.0"
