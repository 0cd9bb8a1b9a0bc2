"""Gateware of the sparse MAC array (Amaranth 0.5)."""

from .config import ArrayConfig, DEFAULT_CONFIG

__all__ = ["ArrayConfig", "DEFAULT_CONFIG"]
