"""`python -m tests.conformance [--short]`: dagent next to Prefect's own Docker worker."""

import sys

from tests.conformance.run import main

sys.exit(main())
