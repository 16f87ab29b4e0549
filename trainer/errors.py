"""The errors Delphi raises instead of tracebacks: each message names where (file, line, key) and what was
expected, and the entry points print it alone as one `error: ...` and exit with code 2."""


class DelphiError(Exception):
    """Anything the user can fix from the message alone."""

    exit_code = 2


class ConfigError(DelphiError):
    """A config key, flag or argument that is wrong."""


class DataError(DelphiError):
    """A dataset file or record that is wrong."""


class RunError(DelphiError):
    """A run that could not do what was asked of a valid config: a failed export check, a prompt that does not
    fit the context, an old-library verification that disagrees."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of a library's exception, for the one line Delphi prints (some span pages)."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]
