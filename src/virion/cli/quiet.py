"""Keep TensorFlow's import-time C++ log lines off the console (unless `--verbose`).

While its shared libraries load, TensorFlow writes absl lines straight to file descriptor 2
("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
"I0000 ... port.cc:153] oneDNN custom operations are on ..."), before TF_CPP_MIN_LOG_LEVEL is
read; once imported, that variable (set by the CLI) does hold. So descriptor 2 points at /dev/null
only while `tensorflow` itself is first imported, wherever a command first imports it (Keras,
tf.data, export, ...), and is restored right after: virion's own warnings and errors, and Python
tracebacks, still reach stderr. CLI only: a library must not touch its host's file descriptors.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys

QUIET_MODULES = ("tensorflow",)


@contextlib.contextmanager
def stderr_fd_to_devnull():
    """Point file descriptor 2 at /dev/null for the block, then back where it was."""
    if sys.stderr is not None:
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (closed): nothing to mute
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class _QuietFirstImport(importlib.abc.MetaPathFinder):
    """Finds a module of QUIET_MODULES the usual way and runs its first import with stderr muted.

    It stays in place until the module is actually executed: a probe such as
    `importlib.util.find_spec("tensorflow")` (virion.backend asks whether a backend is installed)
    must not use it up.
    """

    def __init__(self):
        self._looking = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in QUIET_MODULES or self._looking:
            return None
        self._looking = True  # the lookup below must not come back here
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._looking = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module):
            self.remove()  # once per process
            with stderr_fd_to_devnull():
                exec_module(module)

        spec.loader.exec_module = quiet_exec_module  # this spec's own loader instance only
        return spec

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def install() -> None:
    """Mute the first import of TensorFlow in this process (no-op when it is already imported)."""
    if any(name in sys.modules for name in QUIET_MODULES):
        return
    if not any(isinstance(finder, _QuietFirstImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietFirstImport())
