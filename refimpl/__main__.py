"""``python -m refimpl`` (also installed as ``refimpl``)."""

import sys

from refimpl.cli import main

if __name__ == "__main__":
    sys.exit(main())
