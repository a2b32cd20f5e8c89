"""The trainer's rooms (README `trainer`): `common/` (framework-free), `torch/`,
`mindspore/`, `launch/`, and at the top only the entry points. Which room may import
which is import-linter's check (pyproject.toml, tests/test_layers.py); here, from the
source with `ast` (nothing needs torch or MindSpore): no module lives outside a room, every
name of a trainer module in the repository's code exists, no import circle (counting
imports inside functions), and the two loops have one shape."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trainer" / "kjob_trainer"
ROOMS = {"common", "torch", "mindspore", "launch"}
ENTRY_POINTS = {"train", "evaluate"}  # and `launch`, a room run as `python -m kjob_trainer.launch`


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name under kjob_trainer ("torch.train")."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] != "__init__":
            found[".".join(parts)] = path
    return found


def imports_of(path: Path) -> set[str]:
    """The kjob_trainer modules imported anywhere in the file (module level or inside
    functions), by their dotted name under kjob_trainer; `from kjob_trainer.torch import
    data` counts as `torch.data`."""
    names = set(modules())
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in candidates:
            if name.startswith("kjob_trainer.") and name.split(".", 1)[1] in names:
                found.add(name.split(".", 1)[1])
    return found


def test_every_module_lives_in_a_room_or_is_an_entry_point():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert top == ENTRY_POINTS
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == ROOMS | {"configs"}
    for room in ROOMS:
        assert (PACKAGE / room / "__init__.py").exists(), room
    # The launcher's room is what `python -m kjob_trainer.launch` runs.
    assert (PACKAGE / "launch" / "__main__.py").exists()


def module_exists(dotted: str) -> bool:
    """`kjob_trainer...` is a module or a package of the checkout."""
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def trainer_names_in(path: Path) -> list[tuple[int, str]]:
    """(line, name) of every trainer module that `path` names: in its imports (`from
    kjob_trainer.x import y` names x, and x.y when x is a package: no package of the trainer
    re-exports anything), and in string constants that are a dotted module name (the
    `python -m kjob_trainer...` of tests, subprocesses and the submitter)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if (PACKAGE.parent.joinpath(*node.module.split(".")) / "__init__.py").is_file():
                found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"kjob_trainer(\.\w+)+", node.value):
            found.append((node.lineno, node.value))
    return [(line, name) for line, name in found if name.split(".")[0] == "kjob_trainer"]


def test_every_trainer_module_the_code_names_exists():
    """What a branch written against the old flat names (kjob_trainer.config,
    kjob_trainer.torch_train, ...) would bring in, including imports inside functions and
    benchmark scripts that no fast test runs."""
    files = [p for folder in ("trainer", "tests", "bench", "submitter", "tools") for p in (ROOT / folder).rglob("*.py")]
    missing = [f"{p.relative_to(ROOT)}:{line}: {name}" for p in files for line, name in trainer_names_in(p)
               if not module_exists(name)]
    assert not missing, "\n".join(missing)


def test_the_name_check_sees_old_flat_names(tmp_path):
    old = tmp_path / "old.py"
    old.write_text("from kjob_trainer import torch_train\nfrom kjob_trainer.config import make_config\n"
                   "def f():\n    import kjob_trainer.ssh_hosts\nMODULE = 'kjob_trainer.mindspore_dist'\n"
                   "from kjob_trainer.torch import data\nfrom kjob_trainer.common.config import TrainConfig\n")
    missing = [name.split(".", 1)[1] for _, name in trainer_names_in(old) if not module_exists(name)]
    assert missing == ["torch_train", "config", "ssh_hosts", "mindspore_dist"]


def test_there_is_no_import_circle():
    g = {name: imports_of(path) for name, path in modules().items()}
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


def test_the_circle_check_sees_imports_from_a_room():
    assert {"torch.data", "torch.eval", "common.run_protocol"} <= imports_of(modules()["torch.train"])
    assert {"torch.train", "mindspore.train", "common.config"} <= imports_of(modules()["train"])


def test_the_loops_have_the_same_methods():
    wanted = {"save", "log_interval", "train_one_epoch", "evaluate", "end_of_epoch", "finish", "fit", "lr_at",
              "leave_after_rank0"}

    def methods(module: str) -> set[str]:
        tree = ast.parse(modules()[module].read_text(encoding="utf-8"))
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
        return {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}

    assert wanted <= methods("torch.train") and wanted <= methods("mindspore.train")
