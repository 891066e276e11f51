"""The one exception type for bad user input."""


class UserError(ValueError):
    """Bad input (a file, a field, an argument, a message): the text names the file or field, the
    expected and the actual value. The CLI prints it as one line; any other exception keeps its traceback."""


class MissingFileError(UserError, FileNotFoundError):
    """A user file or directory that is not there (also a FileNotFoundError)."""
