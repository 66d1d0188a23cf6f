"""The package as pip installs it: build the wheel, install it into a fresh virtual environment outside the
checkout, and run the installed `rnnsent` command from another folder, with no repo on the path. The
released models live in the top-level checkpoints/, so the wheel must carry them (setup.py maps them to
rnnsent/released/), and an editable install must find them in the checkout.

Offline: the wheel is built with the setuptools of this environment (--no-build-isolation), and the new
environment takes torch and the other dependencies from this one through a .pth file instead of
downloading them (an unpinned torch could pull a CUDA build of several GB); `pip check` then confirms
that they satisfy the wheel's requirements.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "imdb" / "reviews.json"
TINY = ["--data", str(FIXTURE), "--vocab-size", "300", "--embed-dim", "8",
        "--hidden-size", "6", "--max-len", "60", "--batch-size", "4", "--threads", "1", "--quiet"]


def run(argv, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, argv))}\n{proc.stdout}\n{proc.stderr}"
    return proc


def copy_sources(dest: Path) -> Path:
    """What a clone holds for packaging (build from a copy: an in-tree build would leave build/ and *.egg-info
    in the checkout)."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    for folder in ("rnnsent", "checkpoints"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def fresh_venv(venv: Path, cwd: Path) -> tuple[Path, dict]:
    """(python, env) of a new venv that takes torch and the other dependencies from this one (offline)."""
    # --without-pip: no setuptools of its own (ensurepip's may be too old to build an editable install without the
    # wheel package); pip and setuptools come from this environment through the .pth file, as torch does.
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=cwd)
    py = venv / "bin" / "python"
    site = run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=cwd).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))  # torch, numpy, tqdm, ninja
    Path(site, "rnnsent-test-deps.pth").write_text("\n".join(ours) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", RNNSENT_CACHE=str(cwd / "cache"))
    return py, env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, env, wheel): the wheel built from a copy of the sources and installed into a fresh venv."""
    base = tmp_path_factory.mktemp("wheel")
    src = copy_sources(base / "src")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "--wheel-dir", base / "dist", src], cwd=base)
    (wheel,) = (base / "dist").glob("rnnsent-*.whl")

    venv = base / "venv"
    py, env = fresh_venv(venv, base)
    # --ignore-installed: this environment's own (editable) rnnsent is visible through the .pth too.
    run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed", wheel], cwd=base)
    env.update(TORCH_EXTENSIONS_DIR=str(base / "torch_extensions"))  # a first build, as on a user's machine
    return venv, env, wheel


def test_wheel_holds_the_code_the_kernel_source_and_the_released_models(installed):
    _, _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("rnnsent/__main__.py", "rnnsent/model/csrc/recurrent_cpu.cpp", "rnnsent/released/gru.pt",
                 "rnnsent/released/lstm.pt", "rnnsent/released/rnn.pt", "rnnsent/released/RESULTS.json",
                 "rnnsent/serve/page.html"):
        assert path in names, path
    assert not any(n.startswith(("tests/", "scripts/", "tools/")) for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "rnnsent = rnnsent.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_installed_dependencies_are_satisfied(installed):
    venv, env, _ = installed
    proc = subprocess.run([venv / "bin" / "python", "-m", "pip", "check"], capture_output=True, text=True, env=env)
    assert not [line for line in proc.stdout.splitlines() if line.lower().startswith("rnnsent ")], proc.stdout


def test_installed_command_predicts_with_a_released_model_and_trains(installed, tmp_path):
    venv, env, _ = installed
    where = run([venv / "bin" / "python", "-c", "import rnnsent; print(rnnsent.__file__)"], tmp_path, env).stdout
    assert Path(where.strip()).is_relative_to(venv), where  # the installed copy, not the checkout

    proc = run(["rnnsent", "predict", "--checkpoint", "gru", "--json", "One of the best films I have seen in years. "
                "The acting is superb and the story is moving and beautifully told."], tmp_path, env)
    assert json.loads(proc.stdout)["label"] == "positive"
    assert f"the released gru model, {venv}" in proc.stderr
    if shutil.which("c++") or shutil.which("g++"):  # the kernel source shipped in the wheel builds, and says so once
        assert proc.stderr.count("rnnsent: compiling the fused CPU kernel") == 1, proc.stderr

    proc = run(["rnnsent", "train", "--cell", "gru", "--epochs", "1", "--out", tmp_path / "run", *TINY], tmp_path, env)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["cell"] == "gru" and (tmp_path / "run" / "best.pt").is_file()
    assert "compiling" not in proc.stderr  # built once per machine, not per run
    proc = run([venv / "bin" / "python", "-m", "rnnsent", "evaluate", "--checkpoint", tmp_path / "run", "--json"],
               tmp_path, env)
    assert json.loads(proc.stdout)["n"] == 12


def test_an_editable_install_finds_the_released_models_in_the_checkout(tmp_path):
    src = copy_sources(tmp_path / "clone")
    py, env = fresh_venv(tmp_path / "venv", tmp_path)
    run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation", "--ignore-installed",
         "-e", src], cwd=tmp_path, env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run([py, "-c", "import rnnsent; print(rnnsent.__file__); print(rnnsent.load_checkpoint('gru').path)"],
               elsewhere, env)
    where, path = proc.stdout.split()
    assert Path(where).is_relative_to(src) and Path(path) == src / "checkpoints" / "gru.pt", proc.stdout
