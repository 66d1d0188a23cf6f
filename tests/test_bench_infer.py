"""tools/bench_infer.py --smoke: every system runs from text to predictions and reports a throughput."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "bench_infer.py"


def test_bench_infer_smoke_reports_every_system_at_both_batch_sizes(tmp_path):
    out = tmp_path / "infer.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--threads", "1", "--json", str(out)],
                          env=dict(os.environ, RNNSENT_CACHE=str(tmp_path / "cache")), capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rates = {(r["system"], r["batch"]): r["reviews_per_second"] for r in result["rows"]}
    for system in ("onnxruntime", "rnnsent predict (fused kernel)", "rnnsent predict, input order (before)",
                   "PyTorch stock layers"):
        for batch in (64, 1):
            assert rates[system, batch] > 0, (system, batch)
    assert result["reviews"] == 12 and result["machine"]["threads"] == 1  # the fixture's test reviews
    assert "| onnxruntime |" in proc.stdout
