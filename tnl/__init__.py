"""tnl: train TransNormerLLM (TNL) linear-attention language models.

`import tnl` registers the model ("transnormer") with transformers' AutoConfig / AutoModelForCausalLM. To keep
`import tnl.ops` free of transformers, registration runs as soon as transformers is imported (now, if it already
is; otherwise right after its first import, through a one-shot import hook). `import tnl.model` registers directly.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    try:
        from . import model  # noqa: F401  (registration happens on import)
    except Exception as exc:  # never break the user's transformers import because of us
        warnings.warn(f"tnl: could not register the transnormer model with transformers: {exc}", stacklevel=2)


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Wraps the loader of `transformers` so tnl's Auto registration runs right after it is imported."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201 (importlib protocol)
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):  # noqa: ANN001, ANN202
            exec_module(module)
            _register_auto_classes()

        spec.loader.exec_module = exec_then_register
        return spec


if "transformers" in sys.modules:
    _register_auto_classes()
elif importlib.util.find_spec("transformers") is not None and not any(
    isinstance(f, _RegisterAfterTransformers) for f in sys.meta_path
):
    sys.meta_path.insert(0, _RegisterAfterTransformers())
