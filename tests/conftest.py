"""Shared pytest fixtures (owned by the lead; factories live in tests/factories/)."""
