"""Errors caused by the user's input (config, data, checkpoints): shown as one line, without a traceback."""


class UserError(ValueError):
    """Base class: the message names the problem and the fix."""
