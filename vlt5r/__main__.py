"""``python -m vlt5r ...`` = ``vlt5r ...``."""

import sys

from vlt5r.main import main

sys.exit(main())
