"""The trainer's rooms and corridors (README `trainer`): framework-free shared modules, a
`torch_*` room and a `mindspore_*` room that never import each other, entry points that
nothing imports, and no import circle, counting imports inside functions too. Read from
the source with `ast`, so nothing here needs torch or MindSpore."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "trainer" / "kjob_trainer"
ENTRY_POINTS = {"train", "evaluate", "launch"}
# Shared modules: framework-free (neither torch nor MindSpore, not even lazily).
FRAMEWORKS = ("torch", "torchvision", "timm", "mindspore", "mindcv", "nvidia")


def modules() -> dict[str, Path]:
    return {p.stem: p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def imports_of(path: Path) -> set[str]:
    """Top-level names imported anywhere in the file (module level or inside functions):
    `kjob_trainer.x` as `kjob_trainer.x`, anything else by its first component."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "kjob_trainer":
                names = [f"kjob_trainer.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found.add(".".join(parts[:2]) if parts[0] == "kjob_trainer" else parts[0])
    return found


def graph() -> dict[str, set[str]]:
    return {name: {i.split(".", 1)[1] for i in imports_of(path) if i.startswith("kjob_trainer.")}
            for name, path in modules().items()}


def room(name: str) -> str:
    if name in ENTRY_POINTS:
        return "entry"
    for prefix in ("torch_", "mindspore_"):
        if name.startswith(prefix):
            return prefix.rstrip("_")
    return "shared"


def test_no_subpackage_shadows_a_framework():
    assert not [p for p in PACKAGE.iterdir() if p.is_dir() and p.name in ("torch", "mindspore", "mindcv")]


def test_shared_modules_import_no_framework_and_no_framework_room():
    for name, path in modules().items():
        if room(name) != "shared":
            continue
        assert not imports_of(path) & set(FRAMEWORKS), name
        assert {room(m) for m in graph()[name]} <= {"shared"}, (name, graph()[name])


def test_the_two_framework_rooms_never_import_each_other():
    g = graph()
    for name in g:
        rooms = {room(m) for m in g[name]}
        if room(name) == "torch":
            assert "mindspore" not in rooms and not imports_of(modules()[name]) & {"mindspore", "mindcv"}, name
        if room(name) == "mindspore":
            assert "torch" not in rooms and not imports_of(modules()[name]) & {"torch", "torchvision", "timm"}, name


def test_entry_points_are_not_imported_as_libraries():
    g = graph()
    assert not [(name, m) for name in g for m in g[name] if m in ENTRY_POINTS]


def test_there_is_no_import_circle():
    g = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            assert state.get(nxt) != 1, " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(g):
        if name not in state:
            visit(name, [name])


def test_the_loops_have_the_same_methods():
    wanted = {"save", "log_interval", "train_one_epoch", "evaluate", "end_of_epoch", "finish", "fit", "lr_at",
              "leave_after_rank0"}

    def methods(module: str) -> set[str]:
        tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
        return {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}

    assert wanted <= methods("torch_train") and wanted <= methods("mindspore_train")
