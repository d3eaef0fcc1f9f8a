"""Named crash points for the fault-injection tests (tests/reliability/).

`crash_point("state_save")` does nothing unless `VIRION_CRASH_AT=<phase>:<n>` is set (then the n-th
time that phase is reached the process ends at once with `os._exit(CRASH_EXIT_CODE)`: no cleanup,
no `finally`, as a kill would) or a test installed a handler with `set_handler` (it gets the phase
and decides). The phases are the steps of the commit protocol (see `virion.training.progress`):

  epoch_end      an epoch's training and validation are done, nothing of it is written yet
  best_save      inside the best-weights save (temporary file written, not yet renamed)
  state_save     inside the resume-model save (temporary file written, not yet renamed)
  before_commit  the epoch's files are written, progress.json not yet
  after_commit   progress.json names the epoch, history.csv not yet rewritten
  after_history  history.csv rewritten, stale state files not yet removed
  final_save     inside the final model save (temporary file written, not yet renamed)
  before_done    model files and metadata.json written, "done" not yet committed
  after_done     "done" committed, resume files not yet deleted
  evaluate, report   (the evaluation and report writers, when they call it)
"""

from __future__ import annotations

import os
from collections.abc import Callable

ENV = "VIRION_CRASH_AT"
CRASH_EXIT_CODE = 86
_counts: dict[str, int] = {}
_handler: Callable[[str], None] | None = None


def set_handler(handler: Callable[[str], None] | None) -> None:
    """Call `handler(phase)` at every crash point (tests); None removes it and resets the counters."""
    global _handler
    _handler = handler
    _counts.clear()


def crash_point(phase: str) -> None:
    if _handler is not None:
        _handler(phase)
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted, _, nth = spec.partition(":")
    if wanted != phase:
        return
    _counts[phase] = _counts.get(phase, 0) + 1
    if _counts[phase] == int(nth or 1):
        os._exit(CRASH_EXIT_CODE)
