"""The one exception type the CLI turns into a one-line message (full traceback with --debug)."""


class BenchError(Exception):
    """A problem the user can fix: the message says what is wrong, where, and how to fix it."""


def missing_extra(extra: str, needed_by: str, err: ImportError) -> BenchError:
    """The error for an optional dependency group that is not installed (pyproject's extras)."""
    return BenchError(f"{needed_by} needs the '{extra}' extra ({err.name or err} is not installed); "
                      f"fix: pip install 'sias-bench[{extra}]'")
