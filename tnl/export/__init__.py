"""Export: self-contained Hugging Face folders and OpenNLPLab's checkpoint layout (loading lives in tnl.checkpoint)."""

from tnl.checkpoint import LoadedModel, load_official, load_pretrained

from .errors import ExportError
from .hf import export_hf
from .hub import push_to_hub
from .official import export_official

__all__ = ["ExportError", "LoadedModel", "export_hf", "export_official", "load_official", "load_pretrained",
           "push_to_hub"]
