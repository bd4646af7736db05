"""The real-kernel test tier (tests/realkernel/README.md)."""
