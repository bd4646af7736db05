"""TDX module and P-SEAMLDR versions: ``major.minor.update``, compared as integer tuples.

image-formats.md §5: sysfs prints the update field with at least two digits (``1.5.06``),
except the v2 kernel series, which printed the P-SEAMLDR version unpadded (``1.5.0``).
Both parse to the same value; versions always print normalised as ``M.m.uu``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_VERSION_RE = re.compile(r"^\s*(\d{1,5})\.(\d{1,5})\.(\d{1,5})\s*$")

#: text -> its Version: a mapping file of n releases spells the same few minimum versions n
#: times over. Bounded, so hostile input cannot grow it without limit.
_PARSED: dict[str, Version] = {}
_PARSED_LIMIT = 4096


class Version(NamedTuple):
    major: int
    minor: int
    update: int

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``M.m.u`` (surrounding whitespace and a trailing newline allowed)."""
        if cls is Version and type(text) is str:
            known = _PARSED.get(text)
            if known is not None:
                return known
        if not isinstance(text, str):
            raise ValueError(f"expected a version string, got {type(text).__name__}")
        m = _VERSION_RE.match(text)
        if m is None:
            shown = text.strip() if text.strip() else repr(text)
            raise ValueError(f"{shown!s} is not a version of the form major.minor.update")
        version = cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        if cls is Version and type(text) is str:
            if len(_PARSED) >= _PARSED_LIMIT:
                _PARSED.clear()
            _PARSED[text] = version
        return version

    @property
    def stream(self) -> tuple[int, int]:
        """The ``(major, minor)`` Z-stream this version belongs to."""
        return (self.major, self.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.update:02d}"


def try_parse(text: str) -> Version | None:
    try:
        return Version.parse(text)
    except ValueError:
        return None
