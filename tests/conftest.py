"""Shared test setup: the repository root is importable (the `capacity` package and the
app's `pages` helpers)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
