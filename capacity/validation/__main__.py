"""`python -m capacity.validation ...` runs the `validate` subcommand directly."""

import sys

from .cli import main

sys.exit(main())
