"""rnnsent as an installed package is used: a light `import rnnsent`, the `rnnsent` command (`python -m rnnsent`)
with exactly the scripts' flags, and the fused kernel's first build or fallback said once. Fresh processes,
because what a process has imported is the thing under test."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HAVE_COMPILER = shutil.which("c++") is not None or shutil.which("g++") is not None


def python(*args, code=None, cwd=None, env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    argv = [sys.executable, *(["-c", code] if code else []), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=timeout)


def loaded_modules(code: str) -> set[str]:
    proc = python(code=f"import sys\n{code}\nprint('\\n'.join(sys.modules))")
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_import_rnnsent_loads_neither_torch_nor_the_data_pipeline():
    mods = loaded_modules("import rnnsent")
    assert "torch" not in mods and not any(m.startswith("rnnsent.data") for m in mods)


def test_the_model_and_checkpoints_load_neither_dynamo_nor_the_data_pipeline():
    # torch._dynamo costs about a second to import; only torch.compile needs it. Prediction needs the
    # tokenizer, so load_checkpoint itself (not its import) may pull in rnnsent.data.
    mods = loaded_modules("import torch, rnnsent, rnnsent.model.recurrent\n"
                          "model = rnnsent.SentimentRNN('gru', impl='torch')\n"
                          "model(torch.randint(0, 5000, (2, 7)))\n"
                          "rnnsent.load_checkpoint, rnnsent.from_keras, rnnsent.TrainConfig")
    assert "rnnsent.model.sentiment" in mods and "rnnsent.inference.keras_io" in mods
    assert "torch._dynamo" not in mods
    assert not any(m.startswith("rnnsent.data") for m in mods), sorted(m for m in mods if m.startswith("rnnsent"))


def test_the_fused_kernel_runs_without_dynamo():
    from rnnsent.model import fused

    if not fused.available():
        pytest.skip(f"fused kernel unavailable: {fused.status()}")
    mods = loaded_modules(
        "import torch, rnnsent, rnnsent.model.recurrent\n"
        "model = rnnsent.SentimentRNN('gru', impl='fused')\n"
        "tokens = torch.randint(0, 5000, (2, 7))\n"
        "model(tokens).sum().backward()\n"
        "used = rnnsent.model.recurrent.uses_fused(model.impl, tokens, torch.float32)\n"
        "print('fused-used' if used else 'fused-not-used')"
    )
    assert "fused-used" in mods and "torch._dynamo" not in mods


@pytest.mark.parametrize("command", [[], ["train"], ["evaluate"], ["predict"], ["explain"], ["export"], ["serve"]])
def test_help_answers_without_importing_torch(command):
    code = ("import sys\nfrom rnnsent.__main__ import main\n"
            f"try:\n    main({command + ['--help']!r})\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    proc = python(code=code)
    assert proc.returncode == 0, proc.stderr
    assert "usage: rnnsent" in proc.stdout


@pytest.mark.parametrize("command", ["train", "pretrain", "evaluate", "predict", "explain", "export"])
def test_the_command_has_exactly_the_scripts_flags(command):
    script = python(ROOT / "scripts" / f"{command}.py", "--help", env_extra={"COLUMNS": "100"})
    entry = python("-m", "rnnsent", command, "--help", env_extra={"COLUMNS": "100"})
    assert script.returncode == entry.returncode == 0, script.stderr + entry.stderr
    # Only the program's name differs (not the names of other scripts the help mentions, such as
    # scripts/pretrain.py); argparse wraps the usage lines around it, so compare the words.
    expected = re.sub(rf"(?<![\w/]){command}\.py", f"rnnsent {command}", script.stdout)
    assert entry.stdout.split() == expected.split()


def test_unknown_command_is_one_line():
    proc = python("-m", "rnnsent", "fit")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "rnnsent: error: unknown command 'fit': choose one of train, pretrain, evaluate, predict, explain, export, "
        "serve, tune (see rnnsent --help)"
    ]
    proc = python("-m", "rnnsent")
    assert proc.returncode == 2 and "usage: rnnsent" in proc.stderr


def test_bad_flag_through_the_command_names_the_command():
    proc = python("-m", "rnnsent", "train", "--epochs", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("rnnsent train: error: argument --epochs: epochs must be at least 1, got 0 "
                                   "(see --help)")


def test_predict_with_a_released_model_by_name_from_another_folder(tmp_path):
    proc = python("-m", "rnnsent", "predict", "--checkpoint", "gru", "--json",
                  "A moving, beautifully acted film. I loved it.", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert json.loads(line)["label"] == "positive"
    assert f"the released gru model, {ROOT / 'checkpoints' / 'gru.pt'}" in proc.stderr


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler on this machine")
def test_ahead_of_time_build_says_where_the_kernel_is():
    proc = python("-m", "rnnsent.model.fused", "--build", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("fused CPU kernel") and "cached in " in proc.stdout


def test_no_compiler_falls_back_and_says_so_once(tmp_path):
    # A compiler that does not exist: the build fails at once, the model runs PyTorch's layers, one line says so.
    code = ("import torch, rnnsent, rnnsent.model.recurrent\n"
            "model = rnnsent.SentimentRNN('gru')\n"
            "for _ in range(3):\n"
            "    model(torch.randint(0, 5000, (2, 7))).sum().backward()\n"
            "print(rnnsent.model.recurrent.uses_fused(model.impl, torch.zeros(1, 1, dtype=torch.long), torch.float32))")
    proc = python(code=code, env_extra={"CXX": str(tmp_path / "no-such-compiler"),
                                        "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    lines = proc.stderr.splitlines()
    said = [
        line for line in lines if line.startswith("rnnsent: using PyTorch's stock layers (fused CPU kernel unavailable")
    ]
    assert len(said) == 1, proc.stderr
    assert sum("compiling the fused CPU kernel" in line for line in lines) == 1  # it did try, and said so


def python_choosing_wait_policy(code: str, policy: str | None = None) -> str:
    """`code` in a fresh process whose environment sets OMP_WAIT_POLICY=`policy` (None: no policy, as a new user's
    shell); its stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update({"PYTHONPATH": str(ROOT)}, **({"OMP_WAIT_POLICY": policy} if policy else {}))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


SPINNING = "rnnsent: torch was imported before rnnsent, so OpenMP's idle threads spin"


def test_torch_imported_before_rnnsent_is_said_once_where_threads_would_spin():
    # OpenMP reads its wait policy when torch loads it: rnnsent imported later cannot set it, so it says what to set,
    # once, when predict() or a run's machine set-up starts on 2 or more threads (one thread waits for no other).
    err = python_choosing_wait_policy(
        "import sys, torch, rnnsent\nfrom rnnsent import runtime\nloaded = rnnsent.load_checkpoint('gru')\n"
        "torch.set_num_threads(1)\nrnnsent.predict(loaded, ['A fine film.'])\n"
        "runtime.setup(torch.device('cpu'), threads=1)\nprint('two threads', file=sys.stderr)\n"
        "runtime.setup(torch.device('cpu'), threads=2)\nrnnsent.predict(loaded, ['Dull.'])\n"
        "rnnsent.predict(loaded, ['Dull.'])\n")
    one, two = err.split("two threads\n")
    said = [line for line in two.splitlines() if line.startswith(SPINNING)]
    assert SPINNING not in one and len(said) == 1 and "OMP_WAIT_POLICY=PASSIVE" in said[0], err
    on_two_threads = "from rnnsent import runtime\nruntime.setup(torch.device('cpu'), threads=2)\n"
    rnnsent_first = "import rnnsent, torch, os\nassert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'\n"
    assert SPINNING not in python_choosing_wait_policy(rnnsent_first + on_two_threads)
    assert SPINNING not in python_choosing_wait_policy("import torch, rnnsent\n" + on_two_threads, policy="ACTIVE")
