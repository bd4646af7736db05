"""tdxupdate: select, verify and install Intel TDX Module runtime updates."""

__version__ = "0.1.0"
