"""tools/bench.py --smoke: every system and cell runs end to end on the fixture and reports a throughput."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path


SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "bench.py"


def test_bench_smoke_reports_every_system_and_cell(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, RNNSENT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    systems = ["rnnsent", "plain", "plain+ftz"]
    if importlib.util.find_spec("keras") is not None:
        systems.append("keras")
    rows = {(r.get("system_key", r["system"]), r["cell"]): r for r in result["rows"]}
    for cell in ("gru", "lstm", "rnn"):
        for system in systems:
            row = rows.get((system, cell))
            assert row is not None, f"no row for {system} / {cell}"
            assert row["samples_per_second"] > 0 and row["timed_steps"] >= 1, row
            assert 0.0 <= row["test_accuracy"] <= 1.0 and row["test_reviews"] == 12, row
            assert row["peak_memory_mb"] > 0, row
    assert {e["cell"] for e in result["ratios"]} == {"gru", "lstm", "rnn"}
    assert result["machine"]["torch"] and result["machine"]["cores"] >= 1
    assert "training throughput" in proc.stdout


def test_bench_large_batch_is_labelled_and_runs_isolated(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, RNNSENT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--batch-size", "5", "--cells", "rnn",
                           "--systems", "rnnsent", "plain+ftz", "--isolation", "process", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "smoke, LARGE-BATCH MODE: batch 5"
    assert {r["system"] for r in result["rows"]} == {"rnnsent", "plain+ftz"}
    assert all(r["samples_per_second"] > 0 and r["flush_denormal"] for r in result["rows"])
    assert "LARGE-BATCH MODE" in proc.stdout


def test_bench_busy_mode_reports_idle_and_busy_medians(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, RNNSENT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--busy", "--repeats", "2", "--cells", "rnn",
                           "--json", str(out)], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    busy = json.loads(out.read_text())["busy"]
    assert busy["repeats"] == 2 and busy["neighbours"] == 1 and len(busy["runs"]) == 8
    rows = {(e["state"], e["threads"]): e for e in busy["summary"]}
    assert set(rows) == {("idle", "default"), ("idle", 1), ("busy", "default"), ("busy", 1)}
    for (state, threads), e in rows.items():
        runs = sorted(r["samples_per_second"] for r in busy["runs"] if (r["state"], r["threads"]) == (state, threads))
        assert e["samples_per_second"] == (runs[0] + runs[1]) / 2  # the median of the two repeats
        assert e["vs_one_thread"] == e["samples_per_second"] / rows[(state, 1)]["samples_per_second"]
    assert "busy-machine comparison" in proc.stdout and "target >= 0.9x" in proc.stdout


def test_bench_models_smoke_reports_fused_and_stock_for_both_models(tmp_path):
    out = tmp_path / "models.json"
    env = dict(os.environ, RNNSENT_CACHE=str(tmp_path / "cache"))
    fixture = SCRIPT.parent.parent / "tests" / "fixtures" / "imdb" / "reviews.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT.parent / "bench_models.py"), "--data", str(fixture), "--limit", "24", "--max-len",
         "30", "--batch-size", "4", "--warmup", "1", "--no-keras", "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["model"], r["system"]): r for r in result["rows"]}
    assert result["machine"]["cores"] >= 1 and "machine:" in proc.stdout
    assert rows[("keras-example-bilstm", "rnnsent fused")]["parameters"] == 2_757_761
    for model in ("keras-example-bilstm", "gru-2layer-bidirectional"):
        for system in ("rnnsent fused", "rnnsent stock"):
            assert rows[(model, system)]["samples_per_second"] > 0
