"""``python -m oir``: the same as the ``oir`` console script."""

import sys

from oir.cli import main

if __name__ == "__main__":
    sys.exit(main())
