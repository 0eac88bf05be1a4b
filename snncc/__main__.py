"""``python -m snncc ...`` (and ``torchrun ... -m snncc check ...``): the ``snncc`` command."""

from .cli import exit_process, main

if __name__ == "__main__":
    exit_process(main())
