"""Stores keep the per-key records and apply the engine's decisions atomically."""

from .base import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable"]
