"""The prepared device check (benchmarks/device_check.sh) works before a GPU is ever lent:
``--smoke`` runs its code paths on CPU at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_device_check_smoke_throughput_section(tmp_path: Path) -> None:
    """One real row (Adam, Breakout, 2 seeds, one tiny PPO update), JSON and Markdown."""
    import device_check

    argv = ["--smoke", "--out", str(tmp_path), "--sections", "throughput,estimate",
            "--envs", "Breakout-MinAtar", "--optimizers", "adam"]  # fmt: skip
    assert device_check.main(argv) == 0
    out = json.loads((tmp_path / "device_check.json").read_text())
    (row,) = out["throughput"]
    assert row["seeds"] == 2 and row["steps_per_s"] > 0 and row["finite"]
    assert out["estimate"] == {"skipped": "needs the full section"}
    md = (tmp_path / "device_check.md").read_text()
    assert "| Breakout-MinAtar | adam | 2 |" in md


def test_device_check_estimate_formula() -> None:
    """docs/cluster.md's formula on known inputs: t_eval = compile + S T / R."""
    import device_check

    rows = [dict(env=e, compile_s=10.0, steps_per_s=8e7 / 50) for e in device_check.MINATAR]
    out = {"full": {"rows": rows}, "discovery": {"utilisation": 0.5}}
    device_check.estimate(out)
    e = out["estimate"]
    assert e["t_eval_s"]["Breakout-MinAtar"] == 60.0 and e["candidate_gpu_s"] == 240.0
    assert e["candidates_per_hour"][8] == 0.5 * 8 * 15
    assert e["gpu_days_640"] == round(640 * 240 / 86400 / 0.5, 3)


@pytest.mark.slow
def test_device_check_smoke_end_to_end(tmp_path: Path) -> None:
    """The whole --smoke run (every section, a local Ray discovery; 3 minutes on an idle
    2-core machine) ends with every section's figures."""
    env = dict(os.environ, OUT=str(tmp_path))
    proc = subprocess.run(
        [str(ROOT / "benchmarks" / "device_check.sh"), "--smoke"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads((tmp_path / "device_check.json").read_text())
    assert not out.get("errors")
    assert len(out["throughput"]) == 6 and len(out["full"]["rows"]) == 4
    off, on = out["ahead"]["rows"]
    assert (off["compile_ahead"], on["compile_ahead"]) == (0, 1)
    assert off["compile_wait_s"] >= 0.9 * off["compile_s"] > 0  # every compile waited for
    assert out["discovery"]["candidates_evaluated"] >= 1
    assert 0 <= out["discovery"]["compile_wait_share"] <= 1
    assert out["estimate"]["gpu_days_640"] > 0
