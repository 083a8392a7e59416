"""`python -m whosthere`: the same as the `whosthere` command."""

import sys

from whosthere.cli import main

if __name__ == "__main__":
    sys.exit(main())
