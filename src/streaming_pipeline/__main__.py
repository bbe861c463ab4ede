"""`python -m streaming_pipeline`: the CLI, as the local executor starts its workers."""

import sys

from .cli import main

sys.exit(main())
