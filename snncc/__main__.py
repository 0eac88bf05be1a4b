"""``python -m snncc ...`` (and ``torchrun ... -m snncc check ...``): the ``snncc`` command."""

from .cli import entry

if __name__ == "__main__":
    entry()
