"""User-facing data errors: one line that names the problem and the fix, shown without a traceback."""

from tnl.errors import UserError


class DataError(UserError):
    pass
