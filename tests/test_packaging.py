"""The package is publishable: the wheel holds the whole source tree and runs from a clean virtual environment.

The wheel is built (``python -m build --wheel``) from a fresh copy of the source tree, never in place: setuptools keeps
a ``build/lib`` staging folder in the source tree and ships whatever it holds, so a module deleted or moved since an
earlier build would still be in an in-place wheel. ``--no-isolation`` is used when this environment already satisfies
``[build-system] requires`` (0.6 s against 2.4 s isolated, and no index needed); otherwise the build is isolated.

The wheel is installed into a new ``python -m venv`` (no system site-packages) and ``mi-toolkit grokking`` runs there
from a scratch directory, so neither the repository nor this environment's editable install can be imported.

Dependencies: a full ``pip install <wheel>`` into the clean venv (torch pinned first so pip takes the local CPU wheel)
took about 72 s on a 2-core machine (venv 4 s, torch 22 s, the other dependencies 41-45 s from the index; pip's HTTP
cache stayed empty) and fills ~1.7 GB, so by default the test installs the wheel with ``--no-deps`` and makes this
environment's site-packages visible through a ``.pth`` file holding their paths. Python appends those directories
after the venv's own site-packages but does not process ``.pth`` files inside them, so this environment's editable
install (a ``.pth`` import hook) stays inactive and the wheel's copy of ``mi_toolkit`` is the one imported; the test
asserts that. Since pip then resolved nothing, every ``Requires-Dist`` of the wheel (extras excepted) is checked to be
satisfied where the clean venv's interpreter finds it. Set ``MI_TOOLKIT_TEST_FULL_INSTALL=1`` to resolve and install
all dependencies from the index instead (needs the index; the test then takes ~87 s instead of ~6 s).
"""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mi_toolkit"
FULL_INSTALL = os.environ.get("MI_TOOLKIT_TEST_FULL_INSTALL") == "1"


# Run by the clean venv's interpreter: where `import mi_toolkit` would come from (find_spec uses the same finders as
# the import, without paying for torch's import), its prefix, and the installed version of each name in argv.
PROBE = """
import importlib.metadata, importlib.util, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        found[name] = None
spec = importlib.util.find_spec("mi_toolkit")
print(json.dumps({"mi_toolkit": spec and spec.origin, "prefix": sys.prefix, "found": found}))
"""


def _run(cmd, *, cwd, timeout, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _source_files() -> list[str]:
    """Files under mi_toolkit/ as wheel paths (bytecode and hidden files left out)."""
    return sorted(
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        and not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
    )


def _copy_source_tree(dest: Path) -> None:
    """Top-level files (pyproject.toml, README, ...) and the package directories, without build or bytecode output."""
    dest.mkdir()
    for entry in ROOT.iterdir():
        if entry.is_file():
            shutil.copy2(entry, dest / entry.name)
        elif entry.is_dir() and ((entry / "__init__.py").is_file() or entry.name == "src"):
            shutil.copytree(entry, dest / entry.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    import build  # dev extra; imported here so collecting the other tests never needs it

    tmp = tmp_path_factory.mktemp("wheel")
    src, dist = tmp / "src", tmp / "dist"
    _copy_source_tree(src)
    unmet = [dep for req in build.ProjectBuilder(src).build_system_requires for dep in build.check_dependency(req)]
    isolation = ["--no-isolation"] if not unmet else []
    _run([sys.executable, "-m", "build", "--wheel", *isolation, "--outdir", dist, src], cwd=tmp, timeout=600)
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contains_every_subpackage_module_and_data_file(wheel):
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {name for name in zf.namelist() if name.startswith(f"{PACKAGE.name}/")}
    source = _source_files()
    subpackages = [f for f in source if f.endswith("/__init__.py")]
    missing_packages = [f.removesuffix("/__init__.py") for f in subpackages if f not in in_wheel]
    assert not missing_packages, f"subpackages missing from {wheel.name}: {missing_packages}"
    modules = {f for f in source if f.endswith(".py")}
    assert modules == {f for f in in_wheel if f.endswith(".py")}, (
        f"modules only in the source tree: {sorted(modules - in_wheel)}; "
        f"only in the wheel: {sorted({f for f in in_wheel if f.endswith('.py')} - modules)}"
    )
    # Non-Python files (weights, JSON, py.typed, ...) ship only if [tool.setuptools.package-data] (or MANIFEST.in)
    # names them: setuptools' include-package-data default covers only files known to MANIFEST.in or a VCS plugin.
    missing_data = [f for f in source if not f.endswith(".py") and f not in in_wheel]
    assert not missing_data, f"package data missing from {wheel.name}: {missing_data}"


def _requirements(wheel: Path) -> list[Requirement]:
    """The wheel's unconditional Requires-Dist (extras left out, environment markers evaluated)."""
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(zf.read(metadata).decode())
    reqs = [Requirement(line) for line in message.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def _clean_venv(path: Path, wheel: Path) -> Path:
    """A new venv with the wheel installed (see the module docstring for the two ways); returns its interpreter."""
    python = path / "bin" / "python"
    if FULL_INSTALL:
        _run([sys.executable, "-m", "venv", path], cwd=path.parent, timeout=120)
        # torch first, at this environment's version: pip then keeps the CPU build instead of resolving a CUDA one.
        torch = importlib.metadata.version("torch").split("+")[0]
        _run([python, "-m", "pip", "install", "--quiet", f"torch=={torch}"], cwd=path.parent, timeout=900)
        _run([python, "-m", "pip", "install", "--quiet", wheel], cwd=path.parent, timeout=900)
        return python
    _run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent, timeout=120)
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel],
         cwd=path.parent, timeout=300)
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                   cwd=path.parent, timeout=60).stdout.strip()
    outer = [p for p in dict.fromkeys(_site_dirs()) if Path(p).is_dir()]
    (Path(purelib) / "_outer_site_packages.pth").write_text("".join(f"{p}\n" for p in outer))
    return python


def _site_dirs() -> list[str]:
    import site

    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return dirs


def test_wheel_runs_the_cli_from_a_clean_venv(wheel, tmp_path):
    venv = tmp_path / "venv"
    python = _clean_venv(venv, wheel)
    work = tmp_path / "work"  # cwd outside the repository, so it is not on sys.path
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}

    reqs = _requirements(wheel)
    seen = json.loads(_run([python, "-c", PROBE, *[r.name for r in reqs]], cwd=work, timeout=300, env=env)
                      .stdout.strip().splitlines()[-1])
    assert seen["mi_toolkit"], "the clean venv cannot import mi_toolkit"
    imported = Path(seen["mi_toolkit"]).resolve()
    assert imported.is_relative_to(venv.resolve()), f"clean venv imported mi_toolkit from {imported}, not the wheel"
    assert not imported.is_relative_to(PACKAGE), imported
    assert Path(seen["prefix"]).resolve() == venv.resolve()
    unmet = [f"{r} (found {seen['found'][r.name]})" for r in reqs
             if seen["found"][r.name] is None or not r.specifier.contains(seen["found"][r.name], prereleases=True)]
    assert not unmet, f"requirements of {wheel.name} not satisfied: {unmet}"

    out = work / "run"
    cli = venv / "bin" / "mi-toolkit"
    _run([cli, "grokking", "--p", "23", "--steps", "50", "--out", out, "--quiet", "--no-report"],
         cwd=work, timeout=600, env=env)
    assert (out / "model.safetensors").is_file()
    assert isinstance(json.loads((out / "analysis.json").read_text()), dict)
