"""The one exception type for user mistakes: the stage entry point prints it as one line, exit 2."""


class UserError(Exception):
    """Bad input from the user (params, files, model ids). The message names the key/file/model."""
