"""``python -m xfusion``: the same as the ``xfusion`` command."""

from __future__ import annotations

import sys

from xfusion.cli import main

if __name__ == "__main__":
    sys.exit(main())
