"""The errors Delphi raises for bad input: each message names where (file, line, key) and what was expected."""


class DelphiError(Exception):
    """Bad input from the user; the entry points print the message alone, without a traceback."""


class ConfigError(DelphiError):
    pass


class DataError(DelphiError):
    pass
