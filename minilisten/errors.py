"""The exception types for bad user input, and the check that a user file exists."""
from pathlib import Path


class UserError(ValueError):
    """Bad input (a file, a field, an argument, a message): the text names the file or field, the
    expected and the actual value. The CLI prints it as one line; any other exception keeps its traceback."""


class MissingFileError(UserError, FileNotFoundError):
    """A user file or directory that is not there (also a FileNotFoundError)."""


def need_file(path, what: str = "") -> Path:
    """``Path(path)`` if it is a file, else MissingFileError naming ``what`` and the path."""
    p = Path(path)
    if not p.is_file():
        where = f"{what} ({p})" if what else str(p)
        raise MissingFileError(f"{where}: expected a file, got {'a directory' if p.is_dir() else 'nothing'}")
    return p
