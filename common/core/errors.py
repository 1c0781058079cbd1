"""The one exception type for problems a user can cause and fix."""


class UserError(Exception):
    """A user-fixable problem; the CLI prints `error: <message>` and exits with status 2."""


def warn_user(message: str) -> None:
    """A problem worth seeing that does not stop the run: stderr and the run log."""
    import logging
    import sys

    logging.getLogger("mlhw").warning("warning: %s", message)
    print(f"warning: {message}", file=sys.stderr)
