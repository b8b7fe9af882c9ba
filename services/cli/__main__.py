"""`python -m services.cli ...` (what `make demo` and the tests run): the `medground` command."""

import sys

from services.cli import main

sys.exit(main())
