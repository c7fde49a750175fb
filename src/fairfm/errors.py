"""The one exception type for bad user input.

Every message names what is at fault (file, column, row or value). The CLI prints it as a single line and exits
with code 2; library callers get a ``ValueError`` subclass they can catch.
"""


class InputError(ValueError):
    """Bad input from the user: a missing file or column, an invalid value, an unknown option."""
