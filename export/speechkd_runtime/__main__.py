"""`python -m speechkd_runtime MODEL_DIR a.wav [b.wav ...] [--num-threads N]`."""

import sys

from .cli import main

sys.exit(main())
