"""The micrograph tests share `scan_helpers` (a stand-in classifier): this folder goes on sys.path."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
