"""The API reference builds with pdoc, warning-free, with a page per subpackage and jaxtyping shapes in signatures.

Runs ``scripts/build_docs.sh`` (the script the README points to), so the tested reference is built with exactly the
published options. Everything expected is discovered from the source tree at test time (subpackages, a function with a
jaxtyping annotation, fully qualified ``mi_toolkit.…`` references), never from hard-coded module paths.
"""

import ast
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mi_toolkit"
SCRIPT = ROOT / "scripts" / "build_docs.sh"
JAXTYPING_DTYPES = {"Float", "Int", "Bool", "Shaped", "Num", "Real", "Integer", "Inexact", "Complex", "UInt", "Key"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _public(module: str) -> bool:
    return not any(part.startswith("_") for part in module.split("."))


def _page(out: Path, module: str) -> Path:
    return out / (module.replace(".", "/") + ".html")


def _text(fragment: str) -> str:
    """Rendered HTML fragment -> plain text with collapsed whitespace."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())


@pytest.fixture(scope="module")
def pdoc_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("api")
    # cwd outside the repository: the script must find ./mi_toolkit by itself.
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], cwd=out, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable, "NO_COLOR": "1"})
    return out, proc


@pytest.fixture
def docs(pdoc_run) -> Path:
    out, proc = pdoc_run
    if proc.returncode != 0:
        pytest.fail(f"pdoc failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return out


def test_pdoc_builds_without_warnings(docs, pdoc_run):
    # pdoc reports docstring, annotation and import problems with `warnings.warn` (printed on stderr as "Warn: ...")
    # and still exits 0, leaving the broken part out of the page. In `-o` mode pdoc prints nothing else on stderr,
    # so any output there (a third-party warning during import included) fails the build.
    stderr = pdoc_run[1].stderr.strip()
    assert not stderr, f"pdoc printed warnings:\n{stderr}"


def test_index_and_a_page_per_public_subpackage(docs):
    assert (docs / "index.html").is_file()
    assert _page(docs, "mi_toolkit").is_file()
    packages = sorted(_module_name(init) for init in PACKAGE.rglob("__init__.py") if "__pycache__" not in init.parts)
    subpackages = [name for name in packages if name != "mi_toolkit" and _public(name)]
    missing = [name for name in subpackages if not _page(docs, name).is_file()]
    # A package that sets __all__ hides every submodule not listed in it from pdoc, so this also guards __all__.
    assert not missing, f"no API page for subpackages {missing}"


def test_qualified_references_in_docstrings_resolve(docs):
    """Every ``mi_toolkit.x.y`` named in a rendered docstring exists (pdoc itself renders a dead reference silently).

    pdoc links the references it can resolve; an unlinked one is plain ``<code>``. Those are checked by importing them
    from this checkout, since pdoc also leaves live names unlinked when it does not document them where named (e.g.
    ``pkg.f`` re-exported by a package without ``__all__``). Dead references typically come from moved modules.
    """
    unlinked = set()
    for page in docs.rglob("*.html"):
        source = re.sub(r'<div class="pdoc-code codehilite">.*?</div>', "", page.read_text(), flags=re.S)
        unlinked.update(re.findall(r"<code>(mi_toolkit(?:\.\w+)+)(?:\(\))?</code>", source))
    if not unlinked:
        return
    resolve = (
        "import importlib, json, sys\n"
        "dead = []\n"
        "for ref in json.loads(sys.argv[1]):\n"
        "    parts = ref.split('.')\n"
        "    for i in range(len(parts), 0, -1):\n"
        "        try:\n"
        "            obj = importlib.import_module('.'.join(parts[:i]))\n"
        "        except ImportError:\n"
        "            continue\n"
        "        try:\n"
        "            for attr in parts[i:]:\n"
        "                obj = getattr(obj, attr)\n"
        "        except AttributeError:\n"
        "            dead.append(ref)\n"
        "        break\n"
        "    else:\n"
        "        dead.append(ref)\n"
        "print(json.dumps(dead))\n"
    )
    proc = subprocess.run([sys.executable, "-c", resolve, json.dumps(sorted(unlinked))], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    dead = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not dead, f"docstrings name objects that do not exist: {dead}"


def _jaxtyping_functions():
    """(module, function, dtype, shape) for public module-level functions with a jaxtyping parameter or return."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if "__pycache__" in path.parts or not _public(module):
            continue
        for node in ast.parse(path.read_text(), str(path)).body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            for annotation in [a.annotation for a in args] + [node.returns]:
                for sub in ast.walk(annotation) if annotation is not None else ():
                    if (isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name)
                            and sub.value.id in JAXTYPING_DTYPES and isinstance(sub.slice, ast.Tuple)
                            and len(sub.slice.elts) == 2 and isinstance(sub.slice.elts[1], ast.Constant)
                            and isinstance(sub.slice.elts[1].value, str)):
                        found.append((module, node.name, sub.value.id, " ".join(sub.slice.elts[1].value.split())))
    return found


def test_jaxtyping_shapes_render_in_signatures(docs):
    functions = _jaxtyping_functions()
    assert functions, "no public function with a jaxtyping annotation found in the source tree"
    checked = []
    for module, name, dtype, shape in functions:
        # Its own page, else a package re-exporting it: pdoc leaves out a module that its package's __all__ does not
        # list (and a function its module's __all__ does not list), documenting re-exports listed in __all__ instead.
        parts = module.split(".")
        pages = [_page(docs, ".".join(parts[:i])) for i in range(len(parts), 0, -1)]
        pattern = rf'<section id="{name}">.*?<span class="name">{name}</span>(.*?)</div>'
        blocks = (re.search(pattern, page.read_text(), re.S) for page in pages if page.is_file())
        block = next((b for b in blocks if b), None)
        if block is None:
            continue
        signature = _text(block.group(1))
        rendered = rf"\b{dtype}\[[\w.]+, ['\"]{re.escape(shape)}['\"]\]"
        assert re.search(rendered, signature), f"{module}.{name}: {dtype}[..., {shape!r}] not in {signature!r}"
        checked.append(f"{module}.{name}")
    assert checked, f"none of the jaxtyping-annotated functions has a rendered signature: {functions}"
