"""The one exception type for problems a user can cause and fix."""


class UserError(Exception):
    """A user-fixable problem; the CLI prints `error: <message>` and exits with status 2."""


def warn_user(message: str) -> None:
    """A problem worth seeing that does not stop the run: stderr and the run log."""
    import logging
    import sys

    logging.getLogger("mlhw").warning("warning: %s", message)
    print(f"warning: {message}", file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGTERM from `kill`, a scheduler or a
    notebook's stop button; SIGHUP when its terminal closed): unwound like Ctrl-C, so the run
    says it was interrupted and keeps its last checkpoint."""

    def __init__(self, signum: int):
        import signal

        self.signum, self.name = signum, signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum
