"""The package's shape: rnnsent's modules import one another without a cycle, so each can be read (and
imported) after what it builds on."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rnnsent"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Imports inside a function that reach a module which imports this one back. Each is a cycle hidden from
# Python's import machinery, not from a reader: list one here only with its reason.
LAZY_CYCLES = {
    ("rnnsent.config", "rnnsent.data.tabular"),  # DataConfig.labelled_args builds the reader's Columns
}


def imports(path: Path, modules: set[str]) -> set[str]:
    """The rnnsent modules `path` imports, at module level or inside a function (a lazy import still makes
    the two modules depend on each other). `from rnnsent import x` imports rnnsent.x."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from .data import y
                base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (each reported once, from the module where the walk met it)."""
    found, state = [], {}  # state: 1 on the current path, 2 done

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node, [node])
    return found


def package_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    # a package's __init__ runs before its modules: a module importing its own package is not an edge back
    return {module_name(f): {m for m in imports(f, modules)
                             if not module_name(f).startswith(m + ".") and (module_name(f), m) not in LAZY_CYCLES}
            for f in files}


def test_the_package_has_no_import_cycle():
    graph = package_graph()
    assert "rnnsent.trainer" in graph["rnnsent.pretrain"] and "rnnsent.data.tabular" in graph["rnnsent.data.labelled"]
    assert all(b in imports(PACKAGE.parent / (a.replace(".", "/") + ".py"), set(graph)) for a, b in LAZY_CYCLES)
    assert cycles(graph) == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# Names that moved to a module of their own, at their old home: code outside rnnsent imports them from there.
MOVED = {
    "rnnsent.checkpoint": {"rnnsent.loading": ("load_checkpoint", "LoadedModel", "RELEASED_NAMES"),
                           "rnnsent.resume": ("training_state", "restore_training_state", "load_resume_state"),
                           "rnnsent.release": ("portable_state",)},
    "rnnsent.runfolder": {"rnnsent.resume": ("RESUME_AUTO", "resume_path", "load_resume")},
    "rnnsent.config": {"rnnsent.resume": ("RESUME_MUST_MATCH", "MAY_CHANGE_ON_RESUME", "resume_differences")},
    "rnnsent.models": {"rnnsent.config": ("CELLS", "INITS", "canonical_cell")},
    "rnnsent.data.labelled": {"rnnsent.data.prepare": ("prepare_data",)},
    "rnnsent.data": {"rnnsent.data.prepare": ("prepare_data",)},
    "rnnsent.evaluate": {"rnnsent.runtime": ("autocast_context",)},
}
# Names that were renamed: the old one warns and gives the new one's object.
RENAMED = {"rnnsent.data.ImdbData": "rnnsent.data.text.PreparedData",
           "rnnsent.data.dataset.ImdbData": "rnnsent.data.text.PreparedData",
           "rnnsent.data.encode_fast": "rnnsent.data.text.encode_bucketed",
           "rnnsent.data.text.encode_fast": "rnnsent.data.text.encode_bucketed"}


def test_moved_names_still_import_from_their_old_home():
    import importlib

    for old, homes in MOVED.items():
        for new, names in homes.items():
            for name in names:
                assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), name), \
                    f"{old}.{name}"
        try:
            getattr(importlib.import_module(old), "no_such_name")
        except AttributeError as e:
            assert "no_such_name" in str(e)
        else:
            raise AssertionError(f"{old} invents names")


def test_renamed_names_still_import_with_a_deprecation_message():
    import importlib

    import pytest

    for old, new in RENAMED.items():
        (old_module, old_name), (new_module, new_name) = old.rsplit(".", 1), new.rsplit(".", 1)
        with pytest.warns(DeprecationWarning, match=f"{old_name} is now {new}"):
            value = getattr(importlib.import_module(old_module), old_name)
        assert value is getattr(importlib.import_module(new_module), new_name), old


def test_resume_is_read_in_one_module():
    """What --resume names, loading it, checking it and restoring the trainer are rnnsent.resume's: no other
    module defines them (the old homes only import them)."""
    import rnnsent.resume as resume

    story = ("RESUME_AUTO", "resume_path", "load_resume_state", "load_resume", "find_resume", "RESUME_MUST_MATCH",
             "resume_differences", "check_resume", "training_state", "restore_training_state")
    for name in story:
        assert hasattr(resume, name), name
    for path in PACKAGE.rglob("*.py"):
        if path.name == "resume.py":
            continue
        tree = ast.parse(path.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        defined |= {
            t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
        }
        assert not defined & set(story), f"{path.name} defines {sorted(defined & set(story))}"


def test_rnnsent_train_is_the_train_function_whichever_is_imported_first():
    """`import rnnsent.train` (the old module name) binds the package's attribute to that module: it must still
    call the train function, and give the old names; rnnsent.trainer is where they live now."""
    import subprocess
    import sys

    probe = """
import warnings
import rnnsent, rnnsent.trainer
rnnsent.trainer.train = lambda config, data=None: {"trained": config}  # a stand-in: no training needed here
if ORDER == "function":
    assert rnnsent.train("a") == {"trained": "a"}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import rnnsent.train
assert any(w.category is DeprecationWarning and "rnnsent.trainer" in str(w.message) for w in caught), caught
assert rnnsent.train("b") == {"trained": "b"}, "rnnsent.train(config) does not train"
from rnnsent.train import RECIPES, Trainer, TrainConfig, TrainingInterrupted, resolve_device
import rnnsent.config, rnnsent.stopping, rnnsent.runtime
assert Trainer is rnnsent.trainer.Trainer
assert (RECIPES, TrainConfig) == (rnnsent.config.RECIPES, rnnsent.config.TrainConfig)
assert TrainingInterrupted is rnnsent.stopping.TrainingInterrupted and resolve_device is rnnsent.runtime.resolve_device
print("ok")
"""
    for order in ("function", "module"):
        proc = subprocess.run([sys.executable, "-c", f"ORDER = {order!r}\n" + probe], capture_output=True, text=True,
                              cwd=PACKAGE.parent, timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith("ok"), order + ": " + proc.stderr[-2000:]
