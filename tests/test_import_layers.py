"""Dependencies flow one way (docs/architecture.md): each module's imports, read with `ast`.

audio → features → models → backends → per-window stages → feed → outputs: a module may import
its own layer and the layers before it, never one after it. torch is imported only by the model
port (`models/`), training (`train/`) and the torch comparison engine, and nothing the daemon
can reach imports those, except the torch engine chosen by `engine = "torch"`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "streamclf"

# In dependency order; a module not listed is an application module (cli, pipeline, service,
# bench, train, …), which may import anything.
LAYERS = (
    ("streamclf.errors", "streamclf.config", "streamclf.thread_names"),
    ("streamclf.audio",),
    ("streamclf.features",),
    ("streamclf.models",),
    ("streamclf.backends",),
    ("streamclf.smoothing", "streamclf.tracks", "streamclf.boundaries", "streamclf.loudness",
     "streamclf.alarms", "streamclf.content"),
    ("streamclf.feed",),
    ("streamclf.outputs",),
)
# Upward imports that are allowed, each for a reason.
ALLOWED_UPWARD = {
    # a head trained by `streamclf train` is rebuilt by the train extra's own code
    ("streamclf.backends.torch", "streamclf.train.export"),
}
TORCH_MODULES = ("streamclf.models.musicnn", "streamclf.models.importer",
                 "streamclf.backends.torch", "streamclf.train")
DAEMON_ENTRY = "streamclf.service"
TORCH_ENGINE = "streamclf.backends.torch"  # loaded only when the config asks for it


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, *, known: set[str]) -> set[str]:
    """Every absolute module an import statement anywhere in `source` names (lazy ones too).

    `from a import b` counts `a`, and `a.b` where that is a module; imports under
    `if TYPE_CHECKING:` are left out, since they never run.
    """
    tree = ast.parse(source)
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
               for child in node.body for n in ast.walk(child)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in known)
    return found


def layer_of(module: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def upward_imports(imports: dict[str, set[str]]) -> list[str]:
    """`importer → imported` for each import of a later layer (or an application module)."""
    wrong = []
    for module, targets in imports.items():
        own = layer_of(module)
        if own is None:
            continue
        for target in sorted(t for t in targets if t.startswith("streamclf")):
            theirs = layer_of(target)
            if (theirs is None or theirs > own) and (module, target) not in ALLOWED_UPWARD:
                wrong.append(f"{module} → {target}")
    return wrong


def is_torch_module(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in TORCH_MODULES)


def reachable(imports: dict[str, set[str]], start: str, *, stop: str) -> set[str]:
    """The project's modules an import of `start` can load, not following `stop`."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen or module == stop or module not in imports:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run too
        todo.extend(imports[module])
    return seen


@pytest.fixture(scope="module")
def imports() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p.read_text(), known=known) for p in paths}


def test_no_module_imports_a_later_layer(imports):
    assert upward_imports(imports) == []


def test_torch_is_imported_only_by_the_port_training_and_the_torch_engine(imports):
    wrong = sorted(m for m, targets in imports.items() if not is_torch_module(m)
                   and any(t == "torch" or t.startswith("torch.") for t in targets))
    assert wrong == []


def test_the_daemon_reaches_no_torch_code(imports):
    daemon = reachable(imports, DAEMON_ENTRY, stop=TORCH_ENGINE)
    assert {"streamclf.pipeline", "streamclf.backends.runner", "streamclf.feed.publisher"} <= daemon
    assert sorted(m for m in daemon if is_torch_module(m)) == []


def test_an_upward_import_is_caught():
    """The check can fail: the resampler taking its rate from the log-mel front end is flagged;
    the framer reading files through `audio/`, or an import only type checkers see, is not."""
    known = {"streamclf.audio.sources"}
    found = imported_modules("def f():\n    from streamclf.audio.sources import x\n", known=known)
    assert upward_imports({"streamclf.audio.resample": {"streamclf.features.mel"},
                           "streamclf.features.framer": found}) == [
        "streamclf.audio.resample → streamclf.features.mel"]
    guarded = ("from typing import TYPE_CHECKING\n"
               "if TYPE_CHECKING:\n    from streamclf.pipeline import P\n")
    assert upward_imports({"streamclf.audio.sources": imported_modules(guarded, known=set())}) == []
    assert upward_imports({"streamclf.feed.schema": {"streamclf.pipeline"}}) == [
        "streamclf.feed.schema → streamclf.pipeline"]
