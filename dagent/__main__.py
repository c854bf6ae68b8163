"""`python -m dagent`."""

import sys

from dagent.cli import main

sys.exit(main())
