"""``python -m tdxupdate.sim`` is the same as the ``tdxupdate-sim`` command."""

from tdxupdate.sim.cli import main

raise SystemExit(main())
