"""``python -m flightlog.cli``: the ``flightlog`` command."""

import sys

from flightlog.cli import main

if __name__ == "__main__":
    sys.exit(main())
