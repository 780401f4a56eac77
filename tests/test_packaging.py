"""The project as a package (issue 25): ``pyproject.toml`` agrees with the requirements files, its
wheel holds every module and every file the code reads at run time, and the installed package runs
from a folder outside the checkout (its packages, its commands, the lmms-eval entry point).

The installed-package tests install the wheel (``pip install .``) and the checkout (``pip install -e .``)
into fresh virtual environments outside the checkout, offline and without dependencies, with this
environment's packages behind them as the dependencies (installing those too, from an index, is what
the README's commands and ``.ci/run`` do)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads pyproject.toml with tomllib")
requirements = pytest.importorskip("packaging.requirements", reason="packaging reads requirement lines")
from packaging.utils import canonicalize_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = {"prunesid-studio": "prunesid_cli:studio", "prunesid-report": "prunesid_cli:report",
           "prunesid-inllm-study": "prunesid_cli:inllm_study", "prunesid-evaluate": "prunesid_lmms.cli:main"}
CHECKOUT_SCRIPTS = ("app.py", "report.py", "inllm_study.py", "evaluate.py")


def normalized(lines) -> set[tuple[str, str, str]]:
    out = set()
    for line in lines:
        req = requirements.Requirement(line)
        out.add((canonicalize_name(req.name), str(req.specifier), str(req.marker or "")))
    return out


def requirement_lines(name: str) -> tuple[list[str], list[str]]:
    """A requirements file's own requirement lines, and the files it includes (``-r``)."""
    own, included = [], []
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            included.append(line[3:].strip())
        elif line:
            own.append(line)
    return own, included


def test_the_package_depends_on_what_the_requirements_files_list():
    project = PYPROJECT["project"]
    runtime, _ = requirement_lines("requirements.txt")
    assert normalized(project["dependencies"]) == normalized(runtime)
    evaluation, _ = requirement_lines("requirements-eval.txt")
    assert normalized(project["optional-dependencies"]["eval"]) == normalized(evaluation)
    accel, _ = requirement_lines("requirements-accel.txt")
    assert normalized(project["optional-dependencies"]["accel"]) == normalized(accel)
    dev, included = requirement_lines("requirements-dev.txt")
    assert included == ["requirements.txt", "requirements-eval.txt", "requirements-accel.txt"]
    assert normalized(project["optional-dependencies"]["dev"]) == normalized(dev + evaluation + accel)
    assert not {name for name, _, _ in normalized(evaluation)} & {"lmms-eval", "lmms_eval"}  # installed --no-deps


def test_every_package_of_the_checkout_is_packaged():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("*/**/__init__.py")
             if p.parts[len(ROOT.parts)] not in ("tests", "benchmarks", "yardsticks", ".venv", "build")}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert PYPROJECT["project"]["scripts"] == SCRIPTS
    assert PYPROJECT["project"]["entry-points"]["lmms_eval.models"] == {"prunesid": "prunesid_lmms.plugin:MANIFEST"}


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("Run the tests"):]
    command = re.search(r"```bash\n(.*?)\n```", section, flags=re.S).group(1).strip()
    assert "-e \".[dev]\"" in command and command.endswith("python -m pytest")
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()


# ---- the wheel, and the package installed from it ------------------------------------------------
def project_files() -> list[str]:
    """The checkout's files as a clone has them (tracked, and new files git does not ignore)."""
    done = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"not a git checkout: {done.stderr.strip()}")
    return [f for f in done.stdout.splitlines() if (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the checkout as a clone has it (building writes ``build/`` and ``*.egg-info`` beside
    the sources, and an editable install points at them)."""
    import shutil

    folder = tmp_path_factory.mktemp("source")
    for name in project_files():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    """The wheel built from the copy, offline (this environment's setuptools, no build isolation)."""
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools (requirements-dev.txt)")
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(dist)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return next(dist.glob("prunesid_studio-*.whl"))


def test_the_wheel_holds_every_module_and_what_is_read_at_run_time(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    files = project_files()
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        if package == "prunesid_scripts" or package.startswith("assets"):
            continue
        folder = package.replace(".", "/")
        modules = {f for f in files
                   if f.startswith(folder + "/") and f.endswith(".py") and f.count("/") == folder.count("/") + 1}
        assert modules and modules <= names, f"{package}: {sorted(modules - names)} not in the wheel"
    assert {f"prunesid_scripts/{s}" for s in CHECKOUT_SCRIPTS} <= names
    # What the code reads beside the packages: the calibration photos, the app's and the smoke task's pictures.
    pictures = {f for f in files if f.startswith("assets/") and f.endswith((".jpg", ".mp4"))
                or f.startswith("assets/shapes/") and f.endswith(".png")}
    assert any(f.startswith("assets/calibration/") for f in pictures) and pictures <= names
    # The shapes examples and the shapes model's trained weights (its tower comes from a wheel).
    assert {"assets/shapes/examples.json", "assets/shapes_llava/shapes_llava.safetensors",
            "assets/shapes_llava/config.json"} <= names
    task = "prunesid_lmms/tasks/prunesid_smoke/"
    assert {task + "prunesid_smoke.yaml", task + "smoke.jsonl", task + "utils.py"} <= names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
    for name, target in SCRIPTS.items():
        assert f"{name} = {target}" in entry_points.decode()
    assert "[lmms_eval.models]\nprunesid = prunesid_lmms.plugin:MANIFEST" in entry_points.decode()


def fresh_venv(folder: Path) -> tuple[Path, Path]:
    """A new virtual environment at ``folder`` (outside the checkout): its own site-packages first,
    this environment's behind them as its dependencies (one line of a ``.pth`` file: no network
    needed). The ``.pth`` files of this environment are not run there, so an editable install of the
    checkout here stays out of it. Returns its python and its site-packages."""
    done = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    python = folder / "bin" / "python"
    own = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip())
    import site

    (own / "_this_environments_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python, own


def pip_install(python: Path, *args: str) -> None:
    """``pip install`` into ``python``'s environment, offline, without dependencies (``--ignore-installed``:
    this environment's copy of the project, visible behind it, is neither upgraded nor removed)."""
    done = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                           "--no-build-isolation", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def outside_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return dict(env, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", **extra)


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, Path]:
    """``pip install <wheel>`` (what ``pip install .`` installs) in a fresh virtual environment:
    its python and its site-packages."""
    python, site = fresh_venv(tmp_path_factory.mktemp("venv-wheel") / "venv")
    pip_install(python, str(wheel))
    return python, site


@pytest.fixture(scope="module")
def editable(source, tmp_path_factory) -> tuple[Path, Path, Path]:
    """``pip install -e <checkout>`` (the copy) in a fresh virtual environment: its python, its
    site-packages and the checkout."""
    python, site = fresh_venv(tmp_path_factory.mktemp("venv-editable") / "venv")
    pip_install(python, "-e", str(source))
    return python, site, source


def run_outside(args: list[str], tmp_path, env: dict | None = None, timeout: int = 600) -> str:
    done = subprocess.run([str(a) for a in args], cwd=tmp_path, env=env or outside_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return done.stdout


WHERE = (
    "import json, prunesid, prunesid_eval, prunesid_vlm, studio, viz, prunesid_report, prunesid_lmms\n"
    "import prunesid_cli\n"
    "import prunesid_lmms.model, prunesid_lmms.plugin, prunesid_vlm.text_only, prunesid_vlm.load_options\n"
    "from importlib import metadata\n"
    "from prunesid_cli import script\n"
    "from prunesid_vlm.calibration import calibration_files\n"
    "mods = [prunesid, prunesid_eval, prunesid_vlm, studio, viz, prunesid_report, prunesid_lmms, prunesid_cli,\n"
    "        script('app'), script('evaluate')]\n"
    "print(json.dumps({'files': [m.__file__ for m in mods], 'calibration': [str(p) for p in calibration_files()],\n"
    "                  'tasks': str(prunesid_lmms.TASKS_DIR),\n"
    "                  'models': [e.value for e in metadata.entry_points(group='lmms_eval.models')]}))\n")
"""Where the project's modules, scripts, pictures and tasks are found, and lmms-eval's plug-ins."""


def where(python: Path, tmp_path: Path) -> dict:
    import json

    return json.loads(run_outside([python, "-c", WHERE], tmp_path).strip().splitlines()[-1])


def test_the_installed_packages_import_from_outside_the_checkout(installed, tmp_path, demo_cache):
    python, site = installed
    out = where(python, tmp_path)
    assert all(f.startswith(str(site)) for f in out["files"]), out["files"]
    assert len(out["calibration"]) >= 4 and all(p.startswith(str(site)) for p in out["calibration"])
    assert (Path(out["tasks"]) / "prunesid_smoke" / "prunesid_smoke.yaml").is_file()
    assert "prunesid_lmms.plugin:MANIFEST" in out["models"]


def test_an_editable_install_runs_the_checkout_itself(editable, tmp_path):
    """``pip install -e``: the modules, the scripts and the pictures are the checkout's files; the
    commands are installed."""
    python, site, source = editable
    out = where(python, tmp_path)
    assert all(f.startswith(str(source)) for f in out["files"]), out["files"]
    assert out["files"][-2] == str(source / "app.py")
    assert len(out["calibration"]) >= 4 and all(p.startswith(str(source / "assets")) for p in out["calibration"])
    assert Path(out["tasks"]) == source / "prunesid_lmms" / "tasks"
    assert "usage:" in run_outside([python.parent / "prunesid-evaluate", "--help"], tmp_path).lower()


def test_the_installed_commands_answer_help(installed, tmp_path):
    python, _ = installed
    for name in SCRIPTS:
        text = run_outside([python.parent / name, "--help"], tmp_path)
        assert "usage:" in text.lower(), (name, text[-500:])
    assert "--port" in run_outside([python.parent / "prunesid-studio", "--help"], tmp_path)


def test_lmms_eval_finds_the_installed_model_from_any_folder(installed, tmp_path, demo_cache):
    """``python -m lmms_eval --model prunesid`` through the installed entry point, on the installed
    smoke task (one question)."""
    pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install --no-deps lmms-eval==0.7.3)")
    python, site = installed
    done = subprocess.run([str(python), "-m", "lmms_eval", "--model", "prunesid", "--model_args",
                           "pretrained=demo/tiny-llava-1.5,method=prunesid,num_tokens=32", "--tasks", "prunesid_smoke",
                           "--include_path", str(site / "prunesid_lmms" / "tasks"), "--limit", "1",
                           "--output_path", str(tmp_path / "out")], cwd=tmp_path,
                          env=outside_env(PRUNESID_CACHE=demo_cache), capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "Error during evaluation" not in log, log[-3000:]
    assert "prunesid_smoke" in log and "first_token_kl" in log
    assert next((tmp_path / "out").rglob("*_results.json")).is_file()


def test_python_app_py_takes_the_commands_options(monkeypatch):
    """``python app.py --model … --port …`` is ``prunesid-studio``'s: the options reach the environment
    the app reads at import (they were silently ignored before), and ``--help`` lists them."""
    import subprocess
    import sys

    from prunesid_cli import apply_studio_options

    for name in ("PRUNESID_MODEL", "GRADIO_SERVER_PORT", "GRADIO_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    apply_studio_options(["--model", "demo/tiny-gemma3", "--port", "7999"])
    import os

    assert (os.environ["PRUNESID_MODEL"], os.environ["GRADIO_SERVER_PORT"]) == ("demo/tiny-gemma3", "7999")
    done = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--model" in done.stdout and "--port" in done.stdout
