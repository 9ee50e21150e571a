"""The one exception type users see."""


class UgeError(Exception):
    """A problem with the user's input or environment.

    The CLI prints its message as one line and exits non-zero, without a traceback: raise it for anything
    the user can fix (a bad option, an unreadable dataset, no network), never for a bug.
    """
