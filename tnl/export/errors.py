"""User-facing export errors: one line naming the problem and the fix, shown without a traceback.

Loading and exporting share one error class, so `except ExportError` also catches a model folder that cannot be
loaded (`tnl.checkpoint.load_pretrained`)."""

from tnl.errors import ModelFolderError

ExportError = ModelFolderError
