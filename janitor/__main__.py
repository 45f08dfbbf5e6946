"""`python -m janitor ...` is the same as `janitor ...`."""

import sys

from janitor.cli import main

sys.exit(main())
