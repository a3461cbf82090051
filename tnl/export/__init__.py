"""Export: self-contained Hugging Face folders, OpenNLPLab's checkpoint layout, and loading any of them back."""

from .errors import ExportError
from .hf import export_hf
from .hub import push_to_hub
from .loading import LoadedModel, load_pretrained
from .official import export_official, load_official

__all__ = ["ExportError", "LoadedModel", "export_hf", "export_official", "load_official", "load_pretrained",
           "push_to_hub"]
