"""The export's copy rule on a small made-up tnl tree: the closure of relative imports from the two modeling files,
flat names, rewritten imports that still run, and one-line refusals of what an export could not carry."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from tnl.export import ExportError
from tnl.export.code import model_code

# tnl/<path> -> source: every form of relative import the rule follows
TREE = {
    "__init__.py": "VERSION = 1\n",
    "settings.py": "import os\n\nVALUE = 'settings'\n",
    "model/__init__.py": "",
    "model/configuration_transnormer.py": (
        "from ..ops.pkg import helper\nfrom . import sibling\n\nCONFIG = helper() + sibling.NAME\n"),
    "model/modeling_transnormer.py": (
        "from .configuration_transnormer import CONFIG\nfrom ..ops import common as shared\n"
        "from ..ops.pkg.kern import KERN\n\n\ndef lazy():\n    from ..settings import VALUE\n\n    return VALUE\n\n\n"
        "MODEL = (CONFIG, shared.COMMON, KERN)\n"),
    "model/sibling.py": "NAME = '+sibling'\n",
    "model/unused.py": "from ..data import anything\n",  # never imported by the model: not copied, not checked
    "ops/__init__.py": "",
    "ops/common.py": "from ..settings import VALUE\n\nCOMMON = 'common+' + VALUE\n",
    "ops/pkg/__init__.py": "from .kern import helper\n",
    "ops/pkg/kern.py": (
        "import math\n\nfrom ... import settings\nfrom .. import common\n\nKERN = settings.VALUE + common.COMMON\n\n\n"
        "def helper():\n    try:\n        import triton  # noqa: F401\n    except ImportError:\n        pass\n"
        "    return 'helper' + str(math.floor(1.5))\n"),
}
FLAT = ["configuration_transnormer.py", "modeling_transnormer.py", "ops_common.py", "pkg.py", "pkg_kern.py",
        "sibling.py", "tnl_settings.py"]


def _tree(root: Path, changes: dict[str, str] | None = None) -> Path:
    for rel, text in {**TREE, **(changes or {})}.items():
        path = root / "tnl" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_closure_is_copied_flat_and_runs(tmp_path, monkeypatch):
    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    files = model_code(_tree(tmp_path / "src"))
    assert list(files) == FLAT
    assert "from .pkg_kern import helper" in files["pkg.py"]
    assert "from . import ops_common as shared" in files["modeling_transnormer.py"]
    assert "    from .tnl_settings import VALUE" in files["modeling_transnormer.py"]  # lazy imports too
    assert "from . import tnl_settings as settings" in files["pkg_kern.py"]
    assert "try:  # optional" in files["pkg_kern.py"]  # a function-level triton import is wrapped as well

    flat = tmp_path / "flat" / "exported"
    flat.mkdir(parents=True)
    (flat / "__init__.py").write_text("")
    for name, text in files.items():
        (flat / name).write_text(text)
    # transformers' loader finds every file from the modeling file and needs nothing but the standard library
    found = {Path(p).name for p in get_relative_import_files(str(flat / "modeling_transnormer.py"))}
    assert found | {"modeling_transnormer.py"} == set(FLAT)
    for name in FLAT:
        assert set(get_imports(str(flat / name))) <= set(sys.stdlib_module_names), name
    # and the flattened code computes what the tree computes
    monkeypatch.syspath_prepend(str(tmp_path / "flat"))
    try:
        mod = importlib.import_module("exported.modeling_transnormer")
        assert mod.MODEL == ("helper1+sibling", "common+settings", "settingscommon+settings")
        assert mod.lazy() == "settings"
    finally:
        for name in [n for n in sys.modules if n == "exported" or n.startswith("exported.")]:
            del sys.modules[name]


@pytest.mark.parametrize("changes, message", [
    ({"model/sibling.py": "from ..data import load\n"}, "imports tnl.data, a layer above the model"),
    ({"model/sibling.py": "from .. import export\n"}, "imports tnl.export, a layer above the model"),
    ({"model/sibling.py": "from ... import x\n"}, "leaves the tnl package"),
    ({"model/sibling.py": "import tnl.settings\n"}, "absolute import of tnl"),
    ({"model/sibling.py": "import yaml\n"}, "imports yaml"),
    ({"model/sibling.py": "from .. import VERSION\n"}, "from the package tnl itself"),
    ({"model/sibling.py": "from .missing import x\n"}, "cannot find the module tnl.model.missing"),
    ({"model/sibling.py": "import os; from . import configuration_transnormer\n"}, "shares its line"),
    ({"model/sibling.py": "from . import pkg\n", "model/pkg.py": ""}, "would both be copied as pkg.py"),
])
def test_refusals_are_one_line(tmp_path, changes, message):
    with pytest.raises(ExportError) as info:
        model_code(_tree(tmp_path, changes))
    assert message in str(info.value) and "\n" not in str(info.value)
    if "line" not in message and "copied as" not in message:
        assert "tnl/model/sibling.py:1" in str(info.value)  # names the file and line
