"""The one error type that the CLI turns into a one-line message and exit status 2."""


class UserError(Exception):
    """Bad input from the user (config, file, flag). The message is one line naming the bad value and its source."""

    exit_code = 2
