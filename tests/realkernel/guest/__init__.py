"""Tests that run inside the real-kernel VM only (tests/realkernel/README.md)."""
