"""The one exception type for problems that stop a store operation (the CLI prints it as a single line)."""

from framework.errors import UserError


class StoreError(UserError):
    """A fatal, user-facing problem: the message names the file and says what is wrong, without a traceback."""
