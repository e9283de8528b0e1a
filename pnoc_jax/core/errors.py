"""Errors a user can fix: `main` prints their message as one line, without a traceback."""


class UserError(Exception):
    """A problem with the input, the config or the machine, not a bug; the message says what
    happened, names the file or key, and what to do."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (its type's name if empty), at most `limit` long:
    how a library's multi-line error enters a one-line report."""
    return (str(error).splitlines() or [type(error).__name__])[0][:limit]
