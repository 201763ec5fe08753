"""The error types the CLI turns into a one-line message instead of a traceback."""


class UserError(Exception):
    """Bad input from the user (config, file, flag). The message is one line naming the bad value and its source."""

    exit_code = 2


class RunFailed(RuntimeError):
    """Something the workbench ran (a server, a launched worker) failed; the message names it and its exit status."""

    exit_code = 1


class EndpointError(RuntimeError):
    """An endpoint kept failing after its retries (the message names the URL and the last error)."""

    exit_code = 1
