"""Errors a user can fix. The CLI turns each into one line on stderr and exit status 2."""


class VaekitError(Exception):
    """A problem with the user's input, flags, files or data (never a bug in vaekit)."""

    exit_code = 2


class UsageError(VaekitError):
    """A bad flag, option value or configuration key."""


class DataError(VaekitError):
    """Missing, corrupt or malformed data files, or data with the wrong shape or values."""


class CheckpointError(VaekitError):
    """A run directory or checkpoint that is missing, corrupt or from another model."""


class TrainingError(VaekitError):
    """Training could not go on (for example, too many non-finite steps in a row)."""

    exit_code = 1
