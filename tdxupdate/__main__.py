"""``python -m tdxupdate`` is the same as the ``tdxupdate`` command."""

import gc

from tdxupdate.cli import main

code = main()
# The run is over and its outcome reported. Interpreter shutdown would now walk every object
# the run left for the cyclic collector (tens of ms once the update modules are loaded); the
# process's memory goes back whole, so freeze the heap and let the exit skip that walk.
# Reference counting still frees what it can, and atexit handlers and the flush of
# stdout/stderr still run.
gc.disable()
gc.freeze()
raise SystemExit(code)
