"""`python -m tokex.extension`: what the layer's launcher (`extensions/tokex-proxy`) runs."""

import sys

from tokex.extension.main import main

sys.exit(main())
