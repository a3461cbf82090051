"""User-facing export/loading errors: one line naming the problem and the fix, shown without a traceback."""

from tnl.errors import UserError


class ExportError(UserError):
    pass
