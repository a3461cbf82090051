"""Self-contained model code for an exported folder: the modeling files and every tnl module they reach, flattened.

`transformers` loads `trust_remote_code` models by copying the module named in config.json's `auto_map` and every
file it imports relatively (`get_relative_import_files`: `from .name import ...` lines, found by regex) into one
folder of its module cache, and refuses to load when an import outside a try block is missing (`check_imports`).
So the export copies the closure of relative imports that starts at tnl/model/configuration_transnormer.py and
modeling_transnormer.py into one flat folder:

- every tnl module reached is copied under a flat name: tnl.model.X -> X.py, tnl.ops.P (a package's __init__) ->
  P.py, tnl.ops.P.X -> P_X.py, tnl.ops.X -> ops_X.py, tnl.X -> tnl_X.py;
- every relative import in the copies becomes `from .<flat> import ...`; `from . import X` (which the loader's
  regex does not see) also gets a companion `from .<flat> import __name__ as ...` line, so the file is copied along;
- `import triton` lines go into a `try: ... except ImportError: raise` block: the same behaviour, but the loader's
  import check skips it, so a machine without Triton loads the model and the ops fall back to PyTorch.

The copies may import the standard library, torch, triton, transformers and tnl modules (relatively). An import that
leaves tnl, names a tnl package itself, or reaches the layers above the model (train, eval, export, data, ...) is
refused with an ExportError: the exported folder could not load without tnl.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ExportError

ROOTS = ("tnl.model.configuration_transnormer", "tnl.model.modeling_transnormer")
# tnl's layers above the model: model code that imports them would drag in hydra, datasets, ...
ABOVE_MODEL = ("train", "eval", "export", "data", "commands", "cli", "checkpoint", "official")
ALLOWED_PACKAGES = ("torch", "triton", "transformers")
OPTIONAL_PACKAGES = ("triton",)


@dataclass(frozen=True)
class Module:
    """A tnl module: dotted name, source file, and whether it is a package's __init__."""

    name: str
    path: Path
    is_package: bool

    @property
    def flat(self) -> str:
        """Its module name in the export folder (see the module docstring)."""
        parts = self.name.split(".")
        if len(parts) == 2:
            return f"tnl_{parts[1]}"
        if parts[1] == "model":
            return "_".join(parts[2:])
        if parts[1] == "ops":
            return f"ops_{parts[2]}" if len(parts) == 3 and not self.is_package else "_".join(parts[2:])
        raise ExportError(f"{self.name} is neither in tnl.model nor in tnl.ops; the export has no flat name for it")


def find_module(name: str, root: Path) -> Module | None:
    """The module `name` (tnl.x.y) under `root` (the folder that holds the tnl package), or None."""
    base = root.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return Module(name, base / "__init__.py", True)
    if base.with_suffix(".py").is_file():
        return Module(name, base.with_suffix(".py"), False)
    return None


def _where(module: Module, node: ast.stmt) -> str:
    return f"{module.name.replace('.', '/')}{'/__init__' if module.is_package else ''}.py:{node.lineno}"


def _check_layer(module: Module, name: str, node: ast.stmt) -> None:
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in ABOVE_MODEL:
        raise ExportError(f"{_where(module, node)}: imports {'.'.join(parts[:2])}, a layer above the model; model "
                          "and op code may import only torch, triton, transformers and tnl.model, tnl.ops and tnl's "
                          "top-level helper modules")


def _target(module: Module, name: str, node: ast.stmt, root: Path) -> Module:
    """The tnl module `name` that `node` of `module` imports, refused where the export cannot carry it."""
    _check_layer(module, name, node)
    if name in ("tnl", "tnl.model", "tnl.ops"):
        raise ExportError(f"{_where(module, node)}: imports from the package {name} itself; import from the module "
                          "that defines the name, so the export can copy just that file")
    found = find_module(name, root)
    if found is None:
        raise ExportError(f"{_where(module, node)}: cannot find the module {name} that it imports")
    return found


def _names(aliases: list[ast.alias]) -> str:
    return ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in aliases)


def _check_absolute(module: Module, node: ast.stmt) -> None:
    if isinstance(node, ast.Import):
        tops = {a.name.split(".")[0] for a in node.names}
    else:
        tops = {node.module.split(".")[0]}
    for top in sorted(tops):
        if top == "tnl":
            raise ExportError(f"{_where(module, node)}: absolute import of tnl; import tnl modules relatively so "
                              "the export can copy them")
        if top not in ALLOWED_PACKAGES and top not in sys.stdlib_module_names:
            raise ExportError(f"{_where(module, node)}: imports {top}; model and op code may import only the "
                              f"standard library and {', '.join(ALLOWED_PACKAGES)}, which an export's user has")


def _relative_edit(module: Module, node: ast.ImportFrom, root: Path) -> tuple[list[str], list[Module]]:
    """The lines replacing relative import `node` in the flat folder, and the modules it imports."""
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    parts = package.split(".")
    if node.level - 1 >= len(parts):
        raise ExportError(f"{_where(module, node)}: relative import leaves the tnl package")
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    target = f"{base}.{node.module}" if node.module else base
    lines: list[str] = []
    reached: list[Module] = []
    attributes: list[ast.alias] = []
    for alias in node.names:
        _check_layer(module, f"{target}.{alias.name}", node)
        sub = find_module(f"{target}.{alias.name}", root) if alias.name != "*" else None
        if sub is None:  # a name defined in `target`
            attributes.append(alias)
            continue
        sub = _target(module, sub.name, node, root)
        reached.append(sub)
        lines.append(f"from . import {sub.flat} as {alias.asname or alias.name}")
        # lets transformers' loader (a regex over `from .x import`) find and copy the file
        lines.append(f"from .{sub.flat} import __name__ as _hf_copies_{sub.flat}  # noqa: F401")
    if attributes:
        owner = _target(module, target, node, root)
        reached.append(owner)
        lines.insert(0, f"from .{owner.flat} import {_names(attributes)}")
    return lines, reached


def _replace_statements(source: str, edits: dict[ast.stmt, list[str]], where: str) -> str:
    lines = source.splitlines(keepends=True)
    for node in sorted(edits, key=lambda n: n.lineno, reverse=True):
        first = lines[node.lineno - 1]
        tail = lines[node.end_lineno - 1][node.end_col_offset :].strip()
        if first[: node.col_offset].strip() or (tail and not tail.startswith("#")):
            raise ExportError(f"{where}:{node.lineno}: an import shares its line with other code; "
                              "put it on its own line so the export can rewrite it")
        indent = first[: node.col_offset]
        lines[node.lineno - 1 : node.end_lineno] = [indent + text + "\n" for text in edits[node]]
    return "".join(lines)


def rewrite_module(module: Module, root: Path) -> tuple[str, list[Module]]:
    """`module`'s source for the flat folder, and the tnl modules it imports (relatively)."""
    source = module.path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(module.path))
    edits: dict[ast.stmt, list[str]] = {}
    reached: list[Module] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            edits[node], found = _relative_edit(module, node, root)
            reached.extend(found)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            _check_absolute(module, node)
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            if {n.split(".")[0] for n in names} & set(OPTIONAL_PACKAGES):
                edits[node] = ["try:  # optional: transformers' import check skips try blocks",
                               f"    {ast.get_source_segment(source, node)}", "except ImportError:", "    raise"]
    where = f"{module.name.replace('.', '/')}{'/__init__' if module.is_package else ''}.py"
    return _replace_statements(source, edits, where), reached


def _tnl_root() -> Path:
    import tnl

    return Path(tnl.__file__).resolve().parents[1]


def model_code(root: Path | None = None) -> dict[str, str]:
    """Flat file name -> rewritten source, for the closure of relative imports from ROOTS."""
    root = _tnl_root() if root is None else root
    todo = []
    for name in ROOTS:
        found = find_module(name, root)
        if found is None:
            raise ExportError(f"{name} not found under {root}")
        todo.append(found)
    files: dict[str, str] = {}
    owners: dict[str, str] = {}
    while todo:
        module = todo.pop()
        if module.name in owners.values():
            continue
        name = f"{module.flat}.py"
        if name in owners:
            raise ExportError(f"{module.name} and {owners[name]} would both be copied as {name}; rename one")
        owners[name] = module.name
        files[name], reached = rewrite_module(module, root)
        todo.extend(reached)
    return dict(sorted(files.items()))


def write_model_code(folder: str | Path) -> list[str]:
    """Write the self-contained model code into `folder`; returns the file names written."""
    folder = Path(folder)
    files = model_code()
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return list(files)
