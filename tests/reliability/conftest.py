"""Shared pieces of the reliability tests: the tiny deterministic run lives in tiny_run.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # `import tiny_run` (tests are not a package)
