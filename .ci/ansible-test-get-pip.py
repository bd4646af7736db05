"""Stand-in for the pip bootstrap script ansible-test downloads from its own file server.

That server is not reachable from CI (only package registries are); ansible-test runs this
file instead: pip from the standard library's ensurepip, then the requested pip from PyPI.
"""

import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "pip", "install", *args])
