"""Untrusted optimiser code -> a validated, compiled ``update_fn``."""

from __future__ import annotations

from rayopt.program.loader import load_update_fn

__all__ = ["load_update_fn"]
