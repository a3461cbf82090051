"""Self-contained model code for an exported folder: tnl's modeling files plus the attention op, flattened.

`transformers` loads `trust_remote_code` models by copying the module named in config.json's `auto_map` and every
file it imports relatively (`get_relative_import_files`: `from .name import ...` lines, found by regex) into its
module cache, and refuses to load when a top-level import outside a try block is missing (`check_imports`). So:

- tnl/model/configuration_transnormer.py, modeling_transnormer.py and any sibling they import are copied as is,
  except that `from ..ops.P import ...` becomes `from .P import ...`;
- each op package P the model imports (tnl/ops/lightning_attn, cross_entropy, srms_norm): P/__init__.py becomes
  `P.py` and every other file X.py of it `P_X.py`, with their relative imports rewritten to the new names.
  `from . import X` (which the loader's regex does not see) gets a companion `from .P_X import __name__ as ...`
  line so the file is still copied along;
- top-level `import triton` lines go into a `try: ... except ImportError: raise` block: the same behaviour, but the
  loader's import check skips it, so a machine without Triton loads the model and the op falls back to PyTorch.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .errors import ExportError

MODEL_FILES = ("configuration_transnormer.py", "modeling_transnormer.py")
# tnl/ops/<name> packages, imported by the model as `from ..ops.<name> import ...`
OPS_PACKAGES = ("lightning_attn", "cross_entropy", "srms_norm")
OPTIONAL_TOP_LEVEL = ("triton",)


def _source_dirs() -> tuple[Path, dict[str, Path]]:
    import importlib

    # import_module, not `import a.b as x`: tnl.ops re-exports a function named lightning_attn
    cfg_mod = importlib.import_module("tnl.model.configuration_transnormer")
    ops = {name: Path(importlib.import_module(f"tnl.ops.{name}").__file__).parent for name in OPS_PACKAGES}
    return Path(cfg_mod.__file__).parent, ops


def flat_ops_name(stem: str, package: str = "lightning_attn") -> str:
    """Module name of an ops file inside the export folder."""
    return package if stem == "__init__" else f"{package}_{stem}"


def _names(node: ast.ImportFrom) -> str:
    return ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in node.names)


def _replace_statements(source: str, edits: dict[ast.stmt, list[str]], filename: str) -> str:
    lines = source.splitlines(keepends=True)
    for node in sorted(edits, key=lambda n: n.lineno, reverse=True):
        first = lines[node.lineno - 1]
        tail = lines[node.end_lineno - 1][node.end_col_offset :].strip()
        if first[: node.col_offset].strip() or (tail and not tail.startswith("#")):
            raise ExportError(f"{filename}:{node.lineno}: an import shares its line with other code; "
                              "put it on its own line so the export can rewrite it")
        indent = first[: node.col_offset]
        lines[node.lineno - 1 : node.end_lineno] = [indent + text + "\n" for text in edits[node]]
    return "".join(lines)


def rewrite_ops_file(source: str, filename: str, known: set[str], package: str = "lightning_attn") -> str:
    """Rewrite one file of op package `package` for the flat layout (`known`: stems of the package's files)."""
    tree = ast.parse(source, filename=filename)
    edits: dict[ast.stmt, list[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        if node.level != 1:
            raise ExportError(f"{filename}:{node.lineno}: import leaves the {package} package; the export "
                              "copies op packages alone, so an op must import just torch, triton and itself")
        if node.module is not None:
            stem = node.module.split(".")[0]
            if stem not in known or "." in node.module:
                raise ExportError(f"{filename}:{node.lineno}: cannot resolve relative import {node.module!r}")
            edits[node] = [f"from .{flat_ops_name(stem, package)} import {_names(node)}"]
        else:
            out = []
            for alias in node.names:
                if alias.name not in known:
                    raise ExportError(f"{filename}:{node.lineno}: cannot resolve relative import {alias.name!r}")
                flat = flat_ops_name(alias.name, package)
                out.append(f"from . import {flat} as {alias.asname or alias.name}")
                # lets transformers' loader (a regex over `from .x import`) find and copy the file
                out.append(f"from .{flat} import __name__ as _hf_copies_{flat}  # noqa: F401")
            edits[node] = out
    for node in tree.body:  # top-level optional imports only: function-level ones are already lazy
        top = None
        if isinstance(node, ast.Import):
            top = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = {node.module.split(".")[0]}
        if top and top & set(OPTIONAL_TOP_LEVEL):
            stmt = ast.get_source_segment(source, node)
            edits[node] = ["try:  # optional: transformers' import check skips try blocks",
                           f"    {stmt}", "except ImportError:", "    raise"]
    return _replace_statements(source, edits, filename)


def rewrite_model_file(source: str, filename: str, siblings: set[str]) -> str:
    """Rewrite a tnl/model file: its op import points at the flat copy; sibling imports stay."""
    tree = ast.parse(source, filename=filename)
    edits: dict[ast.stmt, list[str]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        module = node.module or ""
        if node.level == 1 and module.split(".")[0] in siblings:
            continue
        parts = module.split(".")
        if node.level == 2 and len(parts) in (2, 3) and parts[0] == "ops" and parts[1] in OPS_PACKAGES:
            sub = parts[2] if len(parts) == 3 else "__init__"
            edits[node] = [f"from .{flat_ops_name(sub, parts[1])} import {_names(node)}"]
            continue
        raise ExportError(f"{filename}:{node.lineno}: relative import {'.' * node.level}{module} is neither a "
                          f"tnl/model sibling nor one of the ops {OPS_PACKAGES}; the export cannot make it "
                          "self-contained")
    return _replace_statements(source, edits, filename)


def _model_closure(model_dir: Path) -> list[str]:
    """MODEL_FILES plus every tnl/model sibling they import (recursively), as file stems."""
    todo, seen = [Path(f).stem for f in MODEL_FILES], []
    while todo:
        stem = todo.pop()
        if stem in seen:
            continue
        path = model_dir / f"{stem}.py"
        if not path.exists():
            raise ExportError(f"tnl/model/{stem}.py is imported by the model code but does not exist")
        seen.append(stem)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                todo.append(node.module.split(".")[0])
    return sorted(seen)


def write_model_code(folder: str | Path) -> list[str]:
    """Write the self-contained model code into `folder`; returns the file names written."""
    folder = Path(folder)
    model_dir, ops_dirs = _source_dirs()
    written = []
    stems = _model_closure(model_dir)
    for stem in stems:
        src = (model_dir / f"{stem}.py").read_text(encoding="utf-8")
        out = rewrite_model_file(src, f"tnl/model/{stem}.py", set(stems))
        (folder / f"{stem}.py").write_text(out, encoding="utf-8")
        written.append(f"{stem}.py")
    for package, ops_dir in ops_dirs.items():
        ops_files = sorted(ops_dir.glob("*.py"))
        known = {p.stem for p in ops_files}
        for path in ops_files:
            out = rewrite_ops_file(path.read_text(encoding="utf-8"), f"tnl/ops/{package}/{path.name}", known, package)
            name = flat_ops_name(path.stem, package) + ".py"
            (folder / name).write_text(out, encoding="utf-8")
            written.append(name)
    return written
