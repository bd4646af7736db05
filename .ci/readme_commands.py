"""Print the README's run or test command (the first two commands of its first code block).

CI runs exactly what the README tells a newcomer to run; this keeps the two from drifting.
"""

import re
import sys
from pathlib import Path

text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
block = re.search(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S)
if block is None:
    sys.exit("README.md has no code block")
lines = block.group(1).splitlines()
commands = [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
which = {"run": 0, "test": 1}[sys.argv[1]]
print(commands[which])
