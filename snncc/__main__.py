"""``python -m snncc ...`` (and ``torchrun ... -m snncc check ...``): the ``snncc`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
