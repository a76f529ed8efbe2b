"""The house rules of the package, checked on its source: no module imports a private name of another module, no
import cycle between pgpo's modules (a package and its own submodules aside), only the command layer imports the command
layer and ``python -m pgpo`` is the one way in besides the ``pgpo`` script, every command is registered, the README's
module table names every top-level module and package, and no test file imports another."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pgpo"


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path, ast.parse(path.read_text(), filename=str(path))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_module_imports_a_private_name_of_another():
    offences = []
    for _, path, tree in _modules():
        modules = set()  # names bound to imported modules in this file
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                offences += [f"{path.name}: from {node.module} import {a.name}" for a in node.names if _private(a.name)]
            elif isinstance(node, ast.Import):
                modules |= {(a.asname or a.name).split(".")[0] for a in node.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name):
                if node.value.id in modules:
                    offences.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not offences, offences


def _top_level_imports(name: str, tree: ast.Module) -> set[str]:
    out = set()
    package = name if name.count(".") == 0 else name.rsplit(".", 1)[0]
    for node in tree.body:  # module level only: imports inside functions are lazy on purpose
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pgpo"):
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            out.add(package)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("pgpo")}
    return out


def test_no_import_cycle():
    modules = {name: tree for name, _, tree in _modules()}
    graph = {n: {m for m in _top_level_imports(n, t) if m in modules and m != n} for n, t in modules.items()}

    def own(a, b):  # a package and its own submodules import each other by design (a registry's __init__)
        return a.startswith(b + ".") or b.startswith(a + ".")

    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if own(node, nxt):
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])
    assert not cycles, cycles


COMMAND_LAYER = ("pgpo.cli", "pgpo.commands")
DOORS = {"pgpo.__main__", "pgpo.cli"}  # python -m pgpo, and the pgpo script's module


def _imported(name: str, tree: ast.Module) -> set[str]:
    """Every module ``tree`` imports, at any depth (lazy imports inside functions too)."""
    package = name if name.count(".") == 0 else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def test_only_the_command_layer_imports_the_command_layer():
    """The library is used by the commands, never the other way round: a library module that needs a command's
    helper gets it moved into the library."""
    offences = []
    for name, path, tree in _modules():
        if name == "pgpo.__main__" or name.startswith(COMMAND_LAYER):
            continue
        used = {m for m in _imported(name, tree) if m.startswith(COMMAND_LAYER)}
        offences += [f"{path.relative_to(ROOT.parent)} imports {m}" for m in sorted(used)]
    assert not offences, offences


def _starts_a_program(tree: ast.Module) -> bool:
    def is_main_guard(node):
        return (
            isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test)
        )

    return any(is_main_guard(node) for node in tree.body)


def test_python_m_pgpo_is_the_one_way_in():
    """``python -m pgpo <command>`` (pgpo/__main__.py, calling pgpo.cli.main) and the ``pgpo`` script are the only
    entry points: no other ``__main__.py``, no other module that runs as a program."""
    doors = {name for name, path, tree in _modules() if path.name == "__main__.py" or _starts_a_program(tree)}
    assert doors <= DOORS, doors - DOORS
    main = (ROOT / "__main__.py").read_text()
    assert "from pgpo.cli import main" in main and "sys.exit(main())" in main


def test_every_command_module_is_registered_and_has_main():
    from pgpo.cli import COMMANDS

    registered = {module for module, _ in COMMANDS.values()}
    on_disk = {
        f"pgpo.commands.{p.stem}" for p in (ROOT / "commands").glob("*.py") if p.stem not in ("__init__", "parsing")
    }
    assert on_disk == registered, on_disk ^ registered
    for name, path, tree in _modules():
        if name in registered:
            assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), path


def test_no_test_file_imports_another():
    """What test files share lives in tests/conftest.py (fixtures) or tests/reference/ (oracles and helpers): a test
    module imports no other test module (``from test_x import ...``, ``import test_x``)."""
    offences = []
    for path in sorted((ROOT.parent / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            offences += [f"{path.name} imports {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert not offences, offences


@pytest.mark.parametrize("name", ["PGPOConfig", "PGPOTrainer"])
def test_public_face(name):
    import pgpo

    assert getattr(pgpo, name).__name__ == name


def test_the_readme_module_table_names_every_module_and_package():
    readme = (ROOT.parent / "README.md").read_text()
    table = readme.split("## Where things are", 1)[1].split("\n\n", 2)[1]
    named = set(re.findall(r"`(pgpo/[\w./]+)`", table))
    on_disk = {f"pgpo/{p.name}" for p in ROOT.glob("*.py")} | {
        f"pgpo/{p.name}/" for p in ROOT.iterdir() if (p / "__init__.py").is_file()
    }
    assert named == on_disk, {"not in the table": on_disk - named, "not on disk": named - on_disk}
