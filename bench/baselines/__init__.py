"""Baselines: the code users would run instead of so2ops (see each module)."""
