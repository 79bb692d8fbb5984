"""The one error type for mistakes a user can fix.

The CLI prints a `SlmkitError` as a single message and exits non-zero; anything else is a bug and keeps its traceback.
"""


class SlmkitError(Exception):
    """A user-fixable problem: the message says what was wrong and what to do about it."""
