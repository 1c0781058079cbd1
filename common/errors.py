"""The one exception type for problems a user can cause and fix."""


class UserError(Exception):
    """A user-fixable problem; the CLI prints `error: <message>` and exits with status 2."""
