"""One exception type for user mistakes, so the CLI can print it as one line without a traceback."""


class VirionError(Exception):
    """A problem the user can fix (bad path, bad option, unreadable data).

    The message must be one line that names the file or option and says how to fix it.
    """
