"""User-facing export/loading errors: one line naming the problem and the fix, shown without a traceback."""


class ExportError(ValueError):
    pass
