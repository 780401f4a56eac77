"""The package boundaries of docs/architecture.md, checked.

* ``prunesid`` is the algorithm alone: importing it loads no model, UI or compiled-kernel
  library, and none of its modules imports one (or a sibling package);
* ``prunesid_eval`` is pure tensors too: no model, no UI;
* ``prunesid_vlm`` is the only package that imports transformers;
* ``viz`` draws: of the project it reads only the result type, and it knows nothing of Gradio;
* ``studio`` (and ``app.py``) talk to the model through the Pipeline and to the algorithm
  through its public names, never through their internals.

The static rules read every import statement with :mod:`ast` (imports inside functions
included, and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal
name), resolve relative imports and ``from package import submodule`` to the module they
load, and list every violation as ``file:line: statement (module)``.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parents[1]

PROJECT_PACKAGES = ("prunesid", "prunesid_eval", "prunesid_vlm", "studio", "viz", "prunesid_lmms", "prunesid_report",
                    "prunesid_cli")
TOOLS = ("prunesid_lmms", "prunesid_report", "prunesid_cli", "evaluate.py", "report.py", "inllm_study.py")
"""The batch tools (lmms-eval model, fidelity report, installed commands): users of the public doors, like the app."""
TOOL_DOORS = ("prunesid_vlm.text_only", "prunesid_vlm.load_options", "prunesid_vlm.shapes_world")
"""Doors of prunesid_vlm for the batch tools alone: questions without a picture, lmms-eval's loading options,
and the shapes world's scenes and questions (pictures drawn with PIL; no model)."""
MODEL_AND_UI = ("transformers", "PIL", "cv2", "gradio", "matplotlib")
HEAVY_ON_IMPORT = ("numba", "scipy", *MODEL_AND_UI)
"""What ``import prunesid`` must not load: the eigensolver imports SciPy and numba on its
first CPU solve, and the rest is never the algorithm's business."""

PIPELINE_SHIM = "prunesid/pipeline.py"
"""The one module of ``prunesid`` allowed to reach ``prunesid_vlm``: a re-export for old scripts."""


@dataclass(frozen=True)
class Import:
    """One module an import statement loads."""

    path: str
    """File, relative to the repository root."""
    line: int
    statement: str
    """The statement, narrowed to the name that loads ``module``."""
    module: str
    """Absolute dotted name of the module loaded."""

    @property
    def root(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        shown = self.statement if self.module in self.statement else f"{self.statement}  ({self.module})"
        return f"{self.path}:{self.line}: {shown}"


# ---- the scanner -----------------------------------------------------------------------------
def _is_module(dotted: str) -> bool:
    """Whether ``dotted`` names a module or package of this repository."""
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _literal_import_call(node: ast.Call) -> str | None:
    """The module name of ``importlib.import_module("x")`` or ``__import__("x")``, else None."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str) and not first.value.startswith("."):
        return first.value
    return None


def imports_in_source(source: str, path: str, package: str) -> list[Import]:
    """Every module loaded by an import in ``source`` (anywhere: module level, functions,
    ``try`` / ``if`` blocks). ``package`` is the package relative imports start from
    (``"studio"`` for ``studio/layout.py`` and ``studio/__init__.py``; ``""`` at the root)."""
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(path, node.lineno, f"import {alias.name}", alias.name))
        elif isinstance(node, ast.ImportFrom):
            dots = "." * node.level
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts):
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the top level")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = []  # names taken from ``base`` itself (one entry for all of them)
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                if alias.name != "*" and _is_module(sub):
                    found.append(Import(path, node.lineno, f"from {dots}{node.module or ''} import {alias.name}", sub))
                else:
                    names.append(alias.name)
            if names:
                found.append(Import(path, node.lineno, f"from {dots}{node.module or ''} import {', '.join(names)}", base))
        elif isinstance(node, ast.Call):
            name = _literal_import_call(node)
            if name is not None:
                found.append(Import(path, node.lineno, f"{ast.unparse(node.func)}({name!r})", name))
    return sorted(found, key=lambda i: (i.line, i.module))


def imports_in_file(file: Path) -> list[Import]:
    rel = file.relative_to(ROOT)
    package = ".".join(rel.parts[:-1])
    return imports_in_source(file.read_text(encoding="utf-8"), rel.as_posix(), package)


def python_files(*targets: str, exclude: Iterable[str] = ()) -> list[Path]:
    """The ``.py`` files of packages / files given relative to the root."""
    skip = {ROOT / e for e in exclude}
    files = []
    for target in targets:
        path = ROOT / target
        files += [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))
    return [f for f in files if f not in skip and "__pycache__" not in f.parts]


def violations(files: Iterable[Path], bad: Callable[[Import], bool]) -> list[Import]:
    return [imp for file in files for imp in imports_in_file(file) if bad(imp)]


def report(found: list[Import], rule: str) -> str:
    return f"{rule}; {len(found)} violation(s):\n" + "\n".join(f"  {v}" for v in found)


def in_roots(*roots: str) -> Callable[[Import], bool]:
    return lambda imp: imp.root in roots


# ---- what studio may use -------------------------------------------------------------------
def _public(module: str) -> bool:
    return not any(part.startswith("_") for part in module.split("."))


def studio_may_import(module: str) -> bool:
    """The doors of the other packages that the app may use (docs/architecture.md)."""
    root = module.split(".")[0]
    if root not in PROJECT_PACKAGES:
        return True  # third-party or standard library: other rules cover those
    if root == "studio":
        return True
    if root == "prunesid":
        return module in ("prunesid", "prunesid.result")
    if root == "prunesid_vlm":
        # The pipeline, the studies that run on it through its public API only, and media decoding.
        return module in ("prunesid_vlm", "prunesid_vlm.pipeline", "prunesid_vlm.studies", "prunesid_vlm.combination",
                          "prunesid_vlm.media", "prunesid_vlm.serving")
    return _public(module)  # prunesid_eval and viz: any public module


# ---- the rules -------------------------------------------------------------------------------
def test_scanner_sees_every_kind_of_import():
    source = (
        "import os, cv2\n"
        "from . import handlers as H\n"
        "from .views import render\n"
        "from prunesid import select_tokens, psca\n"
        "def later():\n"
        "    from prunesid_vlm.adapters import llava\n"
        "    import importlib\n"
        "    return importlib.import_module('prunesid._eigen.krylov')\n"
    )
    found = imports_in_source(source, "studio/example.py", "studio")
    assert [(i.line, i.module) for i in found] == [
        (1, "cv2"), (1, "os"), (2, "studio.handlers"), (3, "studio.views"),
        (4, "prunesid"), (4, "prunesid.psca"),  # a top-level name, then a submodule
        (6, "prunesid_vlm.adapters.llava"), (7, "importlib"), (8, "prunesid._eigen.krylov"),
    ]
    bad = [i for i in found if not studio_may_import(i.module)]
    assert [str(i) for i in bad] == [
        "studio/example.py:4: from prunesid import psca  (prunesid.psca)",
        "studio/example.py:6: from prunesid_vlm.adapters import llava  (prunesid_vlm.adapters.llava)",
        "studio/example.py:8: importlib.import_module('prunesid._eigen.krylov')",
    ]
    assert [i.line for i in found if in_roots(*MODEL_AND_UI)(i)] == [1]
    # relative imports climb from the package; "from x import *" loads x itself
    deep = imports_in_source("from ..result import Selection\nfrom .a import *\n", "prunesid/_eigen/x.py", "prunesid._eigen")
    assert [i.module for i in deep] == ["prunesid.result", "prunesid._eigen.a"]


def _heavy_modules_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter with the checkout on the path; the module names its
    last line prints (a JSON list)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_prunesid_loads_no_heavy_library():
    """In a fresh interpreter: ``import prunesid`` must leave these out of ``sys.modules``."""
    code = (
        "import json, sys\n"
        "import prunesid\n"
        f"heavy = {HEAVY_ON_IMPORT!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    loaded = _heavy_modules_after(code)
    roots = sorted({m.split(".")[0] for m in loaded})
    assert not loaded, f"import prunesid loaded {roots} ({len(loaded)} modules, e.g. {loaded[:5]})"


def test_the_entry_points_load_nothing_heavy():
    """lmms-eval imports ``prunesid_lmms.plugin`` (the ``lmms_eval.models`` entry point) whenever it
    starts, whichever model is asked for; the installed commands parse ``--help`` before importing
    a script. Neither may load torch, transformers or the app's libraries on its own."""
    code = (  # lmms-eval's model registry loads the entry points itself (and loads nothing heavy: 0.7.3)
        "import json, sys\n"
        "import prunesid_lmms, prunesid_cli\n"
        "try:\n"
        "    import lmms_eval.models.registry_v2, prunesid_lmms.plugin\n"
        "except ImportError:\n"
        "    pass\n"
        f"heavy = {('torch', *HEAVY_ON_IMPORT)!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    loaded = _heavy_modules_after(code)
    assert not loaded, f"the entry points loaded {sorted({m.split('.')[0] for m in loaded})}"


def test_prunesid_imports_no_model_ui_or_sibling_package():
    bad = in_roots(*MODEL_AND_UI, "prunesid_vlm", "prunesid_eval", "studio", "viz")
    found = violations(python_files("prunesid", exclude=[PIPELINE_SHIM]), bad)
    assert not found, report(found, f"prunesid/ (except {PIPELINE_SHIM}) is the algorithm alone")


def test_prunesid_eval_imports_no_model_or_ui():
    bad = in_roots(*MODEL_AND_UI, "prunesid_vlm", "studio", "viz")
    found = violations(python_files("prunesid_eval"), bad)
    assert not found, report(found, "prunesid_eval/ is pure tensor code: no model, no UI")


def test_only_prunesid_vlm_imports_transformers():
    files = python_files("prunesid", "prunesid_eval", "studio", "viz", "app.py", *TOOLS)
    found = violations(files, in_roots("transformers"))
    assert not found, report(found, "transformers is imported only in prunesid_vlm/")


def test_viz_reads_only_the_result_type_and_knows_no_gradio():
    def bad(imp: Import) -> bool:
        if imp.root == "gradio":
            return True
        return imp.root in ("prunesid", "prunesid_eval", "prunesid_vlm", "studio") and imp.module != "prunesid.result"

    found = violations(python_files("viz"), bad)
    assert not found, report(found, "viz/ may import prunesid.result (the result type) and nothing else of the "
                                    "project, and no gradio")


def test_studio_uses_only_public_doors():
    found = violations(python_files("studio", "app.py"), lambda imp: not studio_may_import(imp.module))
    assert not found, report(
        found, "studio/ and app.py may import prunesid (top-level names), prunesid.result, public prunesid_eval "
               "modules, prunesid_vlm, prunesid_vlm.pipeline, prunesid_vlm.studies and prunesid_vlm.combination, viz's public modules and "
               "studio itself")


def tool_may_import(module: str) -> bool:
    """The batch tools use what the app uses, plus the app's media decoding, and no Gradio."""
    if module.split(".")[0] == "gradio":
        return False
    if module.split(".")[0] == "studio":
        return False  # the app's UI: its decoding lives below it, in prunesid_vlm.media
    return (studio_may_import(module) or module in TOOL_DOORS
            or module.split(".")[0] in ("prunesid_lmms", "prunesid_report"))


def test_the_batch_tools_use_only_public_doors():
    found = violations(python_files(*TOOLS), lambda imp: not tool_may_import(imp.module))
    assert not found, report(found, "prunesid_lmms/, prunesid_report/, prunesid_cli/, evaluate.py, report.py and "
                                    "inllm_study.py may import what the app may (public doors), prunesid_vlm.media for "
                                    "decoding, prunesid_vlm.text_only, .load_options and .shapes_world, and no gradio")


def test_the_tests_and_the_benchmarks_do_not_import_each_other():
    """What both measure against lives in ``yardsticks/``: a benchmark is not a test's library, nor
    a test module a benchmark's."""
    found = violations(python_files("tests"), in_roots("benchmarks"))
    found += violations(python_files("benchmarks"), in_roots("tests"))
    found += violations(python_files("yardsticks"), in_roots("tests", "benchmarks"))
    assert not found, report(found, "tests/ and benchmarks/ share code only through yardsticks/")


def _cycles(packages: Sequence[str]) -> list[set[str]]:
    """The import cycles among the modules of ``packages`` (strongly connected components of more than
    one module; imports inside functions count)."""
    modules: dict[str, set[str]] = {}
    for file in python_files(*packages):
        name = ".".join(file.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = {imp.module for imp in imports_in_file(file)}
    graph = {m: {d for d in deps if d in modules and d != m} for m, deps in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    """Not even for type checking: the pipeline's door (``prunesid_vlm.pipeline``) imports the class
    (``base_pipeline``) and its CLS-free subclass (``token_pipeline``), which import the base only;
    ``device`` and ``predictor`` name what they need of a pipeline as Protocols."""
    cycles = _cycles(["prunesid", "prunesid_eval", "prunesid_vlm", "viz", "studio", "prunesid_lmms", "prunesid_report"])
    assert cycles == [], "modules importing each other"
