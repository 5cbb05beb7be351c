"""Errors a user can act on: each message names the file or key and says what to do."""


class TbclfError(Exception):
    """Base class for errors caused by user input (data, config, checkpoints)."""


class DataError(TbclfError, ValueError):
    """A data file, folder or CSV that cannot be used as given."""


class ConfigError(TbclfError, ValueError):
    """A configuration value, weights file or checkpoint that does not fit."""
