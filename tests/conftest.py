"""Shared pytest fixtures (factories live in tests/factories/)."""

from factories.sim import sample_repo, sim, sim_cache  # noqa: F401
