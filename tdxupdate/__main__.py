"""``python -m tdxupdate`` is the same as the ``tdxupdate`` command."""

from tdxupdate.cli import main

raise SystemExit(main())
