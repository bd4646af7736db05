"""``python -m tdxupdate`` is the same as the ``tdxupdate`` command."""

from tdxupdate.entry import main

raise SystemExit(main())
