"""The package's shape: a folder per concern, layers that import only downward, no import cycle of any kind (a
lazy import inside a function counts), no compatibility layer for an internal import path, no long function."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "rnnsent"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


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
    return {module_name(f): {m for m in imports(f, modules) if not module_name(f).startswith(m + ".")}
            for f in files}


def test_the_package_has_no_import_cycle():
    graph = package_graph()
    assert "rnnsent.training.trainer" in graph["rnnsent.training.pretrain"]
    assert "rnnsent.data.tabular" in graph["rnnsent.data.labelled"]
    assert cycles(graph) == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# The layers, bottom first: a module imports only from its own layer or the ones before it. The package's
# __init__, __main__ and cli sit on top (the public names and the command lines). rnnsent.nn (the drop-in recurrent
# layers) shares the model's layer: it runs model/fused.py's kernel, and SentimentRNN is built from it.
LAYERS = ("rnnsent.config", "rnnsent.runtime", "rnnsent.storage", ("rnnsent.model", "rnnsent.nn"), "rnnsent.data",
          "rnnsent.inference", "rnnsent.training", "rnnsent.serve", "rnnsent.cli")


def layer(module: str) -> int:
    if module in ("rnnsent", "rnnsent.__main__"):
        return len(LAYERS)
    return next(i for i, tops in enumerate(LAYERS) for top in ((tops,) if isinstance(tops, str) else tops)
                if module == top or module.startswith(top + "."))


def test_every_module_imports_only_from_its_layer_or_below():
    graph = package_graph()
    upward = [f"{a} -> {b}" for a, deps in graph.items() for b in deps if layer(b) > layer(a)]
    assert upward == [], "imports from a layer above: " + "; ".join(upward)


def test_the_layer_check_sees_an_upward_import():
    assert layer("rnnsent.model.sentiment") < layer("rnnsent.training.trainer") < layer("rnnsent.cli")
    assert layer("rnnsent.storage.checkpoint") < layer("rnnsent.inference.loading")
    assert layer("rnnsent.nn") == layer("rnnsent.model.sentiment") < layer("rnnsent.data.batches")


def test_few_modules_sit_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 10, top
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} == {
        "data", "inference", "model", "serve", "storage", "training"}


def test_no_compatibility_layer_for_internal_import_paths():
    """Only the public packages' __init__ (rnnsent, rnnsent.serve) look names up lazily, so that `import rnnsent`
    loads no torch and `rnnsent.serve` no FastAPI; nothing re-exports with a noqa."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        tree = ast.parse(text)
        getattrs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
        getattrs += [n for n in tree.body if isinstance(n, ast.Assign)
                     and any(isinstance(t, ast.Name) and t.id == "__getattr__" for t in n.targets)]
        public = (PACKAGE / "__init__.py", PACKAGE / "serve" / "__init__.py")
        assert not getattrs or path in public, f"{path.relative_to(PACKAGE)} has a module __getattr__"
        assert "noqa: F401" not in text or "import onnx" in text, f"{path.relative_to(PACKAGE)} re-exports a name"
        assert "sys.modules[__name__].__class__" not in text, f"{path.relative_to(PACKAGE)} swaps its module class"


def test_the_public_api_imports_from_rnnsent():
    import rnnsent

    for name in rnnsent.__all__:
        assert getattr(rnnsent, name) is not None, name
    assert callable(rnnsent.train) and callable(rnnsent.explain) and callable(rnnsent.predict)


def test_resume_is_read_in_one_module():
    """What --resume names, loading it and checking it are rnnsent.training.resume's (the Trainer restores itself):
    no other module defines them."""
    import rnnsent.training.resume as resume

    story = ("RESUME_AUTO", "resume_path", "load_resume_state", "load_resume", "find_resume", "RESUME_MUST_MATCH",
             "resume_differences", "check_resume")
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


MAX_FUNCTION_LINES = 80


def long_functions(source: str, where: str = "<source>") -> list[str]:
    """Every function, method or nested function of `source` over MAX_FUNCTION_LINES lines, from its `def` to its
    last line (a nested function's lines count within its outer one's)."""
    return [f"{where}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_function_is_longer_than_80_lines():
    offenders = [line for path in sorted(PACKAGE.rglob("*.py"))
                 for line in long_functions(path.read_text(), str(path.relative_to(PACKAGE.parent)))]
    assert offenders == [], (f"functions over {MAX_FUNCTION_LINES} lines (split them by what their parts do): "
                             + "; ".join(offenders))


def test_the_length_check_sees_long_methods_and_nested_functions():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))  # a def line and 79: exactly the limit
    assert long_functions(f"def f():\n{body}") == []
    assert long_functions(f"def f():\n{body}    return 1\n") == ["<source>:1 f (81 lines)"]
    indented = body.replace("    ", "        ")
    method = f"class C:\n    async def m(self):\n{indented}        return 1\n"
    assert long_functions(method) == ["<source>:2 m (81 lines)"]
    nested = f"def outer():\n    def inner():\n{indented}    return inner\n"  # inner: 80 lines, outer: 82
    assert long_functions(nested) == ["<source>:1 outer (82 lines)"]
