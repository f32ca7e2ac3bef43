"""The one exception type for user mistakes: the CLI prints its message as one line, no traceback."""


class UserError(Exception):
    """Bad input from the user (paths, options, files). ``str(e)`` is the whole message."""
