"""The one base class of errors caused by what a user asked for (bad input, missing files, a run
that diverged): interfaces show their message instead of a traceback."""


class UserError(Exception):
    """An error whose message tells the user what to change."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user pointed at does not hold what it should."""


class MissingDependencyError(UserError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


class RunError(UserError, ValueError):
    """A run cannot start or continue as asked (bad input, changed configuration, unwritable or busy folder)."""
