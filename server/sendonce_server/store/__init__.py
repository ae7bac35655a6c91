"""Stores keep the per-key records and apply the engine's decisions atomically.

The port they implement is `engine.ports.Store`.
"""
