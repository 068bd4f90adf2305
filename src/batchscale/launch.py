"""The ``batchscale`` command's entry point.

PyTorch takes a second or two to load; Ctrl-C meanwhile ends as it does later, in one line
with exit status 130, instead of a traceback from the middle of an import.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Load the command line, then run it."""
    try:
        from batchscale.cli import main as run
    except KeyboardInterrupt:
        print("error: interrupted before anything ran; nothing was stored", file=sys.stderr)
        return 130
    return run()
