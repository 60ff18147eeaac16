"""Allow ``python -m qhnetv2 ...`` (same as the ``qhnetv2`` console script)."""
import sys

from qhnetv2.cli import main

if __name__ == "__main__":
    sys.exit(main())
