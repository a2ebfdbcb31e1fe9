"""The one exception type the CLI turns into a one-line message (full traceback with --debug)."""


class BenchError(Exception):
    """A problem the user can fix: the message says what is wrong, where, and how to fix it."""
