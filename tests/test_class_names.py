"""No two classes (or type aliases) in ``service/`` share a name: a name says where its
definition lives, and a reader who finds one ``Call`` has found the only one."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SERVICE = Path(__file__).resolve().parent.parent / "service"


def _type_names(tree: ast.Module) -> list[str]:
    """Classes anywhere in a module, and its CapWords module-level assignments (aliases)."""
    names = [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name) and target.id[0].isupper() and not target.id.isupper():
                names.append(target.id)
    return names


def definitions() -> dict[str, list[str]]:
    """Type name -> the modules (paths under service/) that define it."""
    found: dict[str, list[str]] = defaultdict(list)
    for path in sorted(SERVICE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in _type_names(tree):
            found[name].append(str(path.relative_to(SERVICE.parent)))
    return found


def test_every_class_and_type_alias_in_service_has_a_name_of_its_own() -> None:
    shared = {name: where for name, where in definitions().items() if len(where) > 1}
    assert shared == {}


def test_the_check_sees_a_shared_name() -> None:
    tree = ast.parse("class Call: ...\nCall2 = int\nclass Outer:\n    class Call: ...\n")
    assert _type_names(tree).count("Call") == 2
