"""Export: self-contained Hugging Face folders, OpenNLPLab's checkpoint layout, and loading any of them back."""

from .errors import ExportError
from .hf import export_hf

__all__ = ["ExportError", "export_hf"]
