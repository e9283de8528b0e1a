"""Errors a user can fix: `main` prints their message as one line, without a traceback."""


class UserError(Exception):
    """A problem with the input, the config or the machine, not a bug; the message says what
    happened, names the file or key, and what to do."""
