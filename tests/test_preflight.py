"""Pre-flight errors through the real CLI (a subprocess): what can be known before a run
starts is reported as one line on stderr, with a nonzero exit, before any actor starts
and before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_discovery

from rayopt.config import dump

ROOT = Path(__file__).resolve().parents[1]
PAPER = str(ROOT / "configs" / "paper.yaml")


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "RAY_ADDRESS")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "rayopt", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full,
        timeout=300,
    )


def _one_line_error(proc: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"rayopt {command}: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_paper_config_without_its_api_key_fails_before_ray(tmp_path: Path) -> None:
    proc = _cli("discover", "--config", PAPER, cwd=tmp_path)
    _one_line_error(proc, "discover", "OPENAI_API_KEY", "mutator.llm.thinker/coder")
    assert "ray:" not in proc.stdout  # Ray never started
    assert not (tmp_path / "runs").exists()  # nothing written


def test_paper_config_on_a_cluster_without_gpus(ray_local: str, tmp_path: Path) -> None:
    """configs/paper.yaml asks for a GPU per evaluator; the test cluster has none."""
    run_dir = tmp_path / "run"
    proc = _cli(
        "discover",
        "--config",
        PAPER,
        "--address",
        ray_local,
        "--run-dir",
        str(run_dir),
        cwd=tmp_path,
        env={"OPENAI_API_KEY": "sk-not-used"},
    )
    line = _one_line_error(proc, "discover", "no evaluator fits", "GPU 1", "GPU 0")
    assert "sk-not-used" not in line
    assert not run_dir.exists()  # no run directory, no config.yaml for a run that never ran


def _main_error(capsys: pytest.CaptureFixture, command: str, *args: str) -> str:
    """The same CLI in this process (no interpreter start-up): exit 2, one stderr line."""
    from rayopt.cli import main

    assert main([command, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"rayopt {command}: "), err
    return err[0]


def test_discover_open_checkpoint_and_output_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "nowhere" / "multi_OPEN.npy"
    line = _main_error(
        capsys, "discover", "search.references=[adam,open]", f"open_weights={missing}"
    )
    assert "search.references" in line and str(missing) in line
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    line = _main_error(capsys, "discover", f"out_dir={a_file}")
    assert "output directory" in line and "not a directory" in line
    line = _main_error(capsys, "discover", "--run-dir", str(a_file / "run"))
    assert "is a file, not a directory" in line
    held = tmp_path / "held"
    held.mkdir()
    (held / "config.yaml").write_text(dump(tiny_discovery()))
    line = _main_error(capsys, "discover", "--run-dir", str(held))
    assert "already holds a run" in line and "--resume" in line
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert "not writable" in _main_error(capsys, "discover", "--run-dir", str(ro / "run"))
    expected = {"a-file", "held"} | ({"ro"} if os.geteuid() != 0 else set())
    assert {p.name for p in tmp_path.iterdir()} == expected  # nothing else was written


def test_evaluate_and_confirm_when_no_evaluator_fits(
    ray_local: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "sweep"
    line = _main_error(
        capsys, "evaluate", "--address", ray_local, "--out", str(out), "evaluator.num_gpus=1"
    )
    assert "no evaluator fits" in line and "GPU 1" in line
    assert not out.exists()  # nothing written
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert "not a directory" in _main_error(capsys, "evaluate", "--out", str(a_file), "seeds=1")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump(tiny_discovery(**{"evaluator.num_gpus": 1.0})))
    line = _main_error(capsys, "confirm", str(run), "--address", ray_local)
    assert "no evaluator fits" in line and "GPU 1" in line


def test_resume_refuses_a_run_made_with_another_ppo_config(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A run journalled under ``truncation: bootstrap`` (the default before issue 13) whose
    config.yaml does not name it would resume under ``terminate``: refused in one line,
    saying what to add."""
    import dataclasses
    import json

    from rayopt.results.journal import JournalWriter
    from rayopt.search.preflight import check_resume

    cfg = tiny_discovery()
    run = tmp_path / "old-run"
    run.mkdir()
    (run / "config.yaml").write_text(dump(cfg))
    ppo = dataclasses.asdict(cfg.ppo_config("CartPole-v1"))
    row = dict(
        row_type="evaluation",
        stage="full",
        run_id="tiny-ms0",
        candidate_id="init-sign_update",
        env="CartPole-v1",
        seed=0,
        status="ok",
        final_return=10.0,
    )
    JournalWriter(run).write([dict(row, ppo_config=json.dumps(ppo))])
    check_resume(cfg, run)  # the same config: fine
    old = tmp_path / "older-run"
    old.mkdir()
    (old / "config.yaml").write_text(dump(cfg))
    JournalWriter(old).write([dict(row, ppo_config=json.dumps(dict(ppo, truncation="bootstrap")))])
    line = _main_error(capsys, "discover", "--resume", str(old))
    assert "truncation: 'bootstrap'" in line and "truncation: 'terminate'" in line
    assert "ppo.overrides" in line
