"""What tools/bench.py prints and writes besides its rows: the machine, the ratios to the other systems
and the tables. Plain Python; torch is imported only to name a GPU."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from pathlib import Path

# The target on CPU: rnnsent at least this many times Keras (TensorFlow) in the same run.
CPU_TARGET_VS_KERAS = 2.0


def machine_info(device: str) -> dict:
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "torch": version("torch"), "tensorflow": version("tensorflow-cpu") or version("tensorflow"),
            "keras": version("keras"), "numpy": version("numpy"), "device": device}
    if device.startswith("cuda"):
        import torch

        info.update(gpu=torch.cuda.get_device_name(torch.device(device)), cuda=torch.version.cuda)
    return info


def ratios(rows: list[dict]) -> list[dict]:
    by = {(r.get("system_key", r["system"]), r["cell"]): r["samples_per_second"] for r in rows}
    out = []
    for cell in dict.fromkeys(r["cell"] for r in rows):
        if ("rnnsent", cell) not in by:
            continue
        entry = {"cell": cell}
        for other in ("plain", "plain+ftz", "keras"):
            if (other, cell) in by:
                entry[f"rnnsent/{other}"] = by[("rnnsent", cell)] / by[(other, cell)]
        if "rnnsent/keras" in entry:
            entry.update(target_vs_keras=CPU_TARGET_VS_KERAS, target_met=entry["rnnsent/keras"] >= CPU_TARGET_VS_KERAS)
        out.append(entry)
    return out


def format_table(rows: list[dict], ratio_rows: list[dict], title: str, ablation: bool = False) -> str:
    base = {r["cell"]: r["samples_per_second"] for r in rows if r["system"] == "rnnsent"}
    head = f"{'cell':<5} {'system':<30} {'samples/s':>10} " + (
        f"{'vs rnnsent':>10} {'test acc':>9} {'eval s':>7} {'ckpt s':>7}" if ablation else
        f"{'steps':>6} {'seconds':>8} {'peak MB':>8} {'test acc':>9} {'eval s':>7}")
    lines = [title, head, "-" * len(head)]
    for r in rows:
        start = f"{r['cell']:<5} {r['system']:<30} {r['samples_per_second']:>10.1f} "
        if ablation:
            rel = f"{r['samples_per_second'] / base[r['cell']]:.2f}x" if r["cell"] in base else "-"
            ckpt = f"{r['checkpoint_seconds']:.3f}" if "checkpoint_seconds" in r else ""
            lines.append(start + f"{rel:>10} {r['test_accuracy']:>9.4f} {r['eval_seconds']:>7.2f} {ckpt:>7}")
        else:
            lines.append(start + f"{r['timed_steps']:>6} {r['timed_seconds']:>8.2f} {r['peak_memory_mb']:>8.0f} "
                                 f"{r['test_accuracy']:>9.4f} {r['eval_seconds']:>7.2f}")
    if ratio_rows:
        lines += ["", f"{'cell':<5} {'rnnsent/plain':>14} {'rnnsent/plain+ftz':>18} {'rnnsent/keras':>14}  "
                      f"target (>= {CPU_TARGET_VS_KERAS:g}x keras)"]
        for e in ratio_rows:
            f = [f"{e[k]:.2f}x" if k in e else "-" for k in ("rnnsent/plain", "rnnsent/plain+ftz", "rnnsent/keras")]
            met = "-" if "target_met" not in e else (
                "met" if e["target_met"] else f"missed ({e['rnnsent/keras'] / CPU_TARGET_VS_KERAS:.0%} of it)")
            lines.append(f"{e['cell']:<5} {f[0]:>14} {f[1]:>18} {f[2]:>14}  {met}")
    return "\n".join(lines)

