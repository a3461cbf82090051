"""Errors caused by the user's input (config, data, checkpoints): shown as one line, without a traceback."""


class UserError(ValueError):
    """Base class: the message names the problem and the fix."""


class ModelFolderError(UserError):
    """A model folder (checkpoint, run, exported or official model, export target) that cannot be read or written.

    `tnl.export.ExportError` is this class: loading and exporting share their errors."""
