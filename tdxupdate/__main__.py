"""``python -m tdxupdate`` is the same as the ``tdxupdate`` command."""

import gc

# One short run that allocates many small objects and frees nearly all of them by reference
# counting: the cyclic collector's default pace (a pass every 700 allocations) spends more
# time walking the imported modules than it ever frees. A slower pace still collects cycles.
gc.set_threshold(10_000, 50, 100)

from tdxupdate.cli import main  # noqa: E402 - the pace applies to the imports as well

code = main()
# The run is over and its outcome reported. Interpreter shutdown would now walk every object
# the run left for the cyclic collector (tens of ms once the update modules are loaded); the
# process's memory goes back whole, so freeze the heap and let the exit skip that walk.
# Reference counting still frees what it can, and atexit handlers and the flush of
# stdout/stderr still run.
gc.disable()
gc.freeze()
raise SystemExit(code)
