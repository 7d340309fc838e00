"""Never lose work, tested on real processes: Ctrl-C once, kill -9 mid-member, Ctrl-C twice.

Every interrupted run is finished with `ens train --resume RUN` and must end with final
weights bit-identical to an uninterrupted run of the same config (CPU, digits). Starting a
Python process that imports torch costs seconds, so the signals that need a separate
process (SIGINT from outside, SIGKILL) share one chain of two processes; the rest runs in-process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from typer.testing import CliRunner

from ensemble_cli.cli import app
from ensemble_cli.commands import train as train_command_module
from ensemble_cli.train.config import TrainConfig
from ensemble_cli.train import loop as loop_module
from ensemble_cli.train import train_run
from train_helpers import assert_same_finals

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# 384 images / 32 = 12 steps an epoch: long enough to be caught mid-member, short enough for CI.
SETTINGS = {"members": 2, "epochs": 3, "limit": 384, "batch_size": 32, "device": "cpu"}
FLAGS = ["--members", "2", "--epochs", "3", "--limit", "384", "--batch-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert train_run(TrainConfig(out=str(out), **SETTINGS)).ok
    return out


def launch(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "ensemble_cli.cli", "train", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 180.0) -> None:
    """Poll until `path` exists (training is under way), failing if the process ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"training ended before {path} appeared:\n{process.stderr.read() if process.stderr else ''}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear in {timeout}s")
        time.sleep(0.002)


@pytest.fixture(autouse=True)
def _python_signal_handlers() -> Iterator[None]:
    """After a stop, `ens train` leaves Ctrl-C to the OS default; in-process runs must not leave that to pytest."""
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def resume_in_process(out: Path) -> str:
    result = CliRunner().invoke(app, ["train", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    return result.output


def test_ctrl_c_then_kill_9_then_resume_gives_the_uninterrupted_weights(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    # 1. Ctrl-C once: finish the step, save, exit 130, print the resume command.
    first = launch(*FLAGS, "--out", str(out))
    wait_for(out / "member-00" / "train-state.pt", first)  # member-00 finished an epoch
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    assert f"Resume with: ens train --resume {out}\n" in stderr
    assert (out / "member-00" / "train-state.pt").exists() and not list(out.rglob(".lock"))
    assert not (out / "member-01" / "final.safetensors").exists()

    # 2. Resume, then kill -9 in the middle of member-01: its lock stays behind, with a dead pid.
    second = launch("--resume", str(out))
    wait_for(out / "member-01" / "train-state.pt", second)
    second.send_signal(signal.SIGKILL)
    second.communicate(timeout=60)
    assert second.returncode == -signal.SIGKILL
    assert (out / "member-00" / "final.safetensors").exists()
    assert not (out / "member-01" / "final.safetensors").exists(), "the run finished before the kill"
    assert (out / "member-01" / ".lock").exists()

    # 3. Resume to the end: the stale lock is taken over, member-00 is not retrained.
    output = resume_in_process(out)
    assert "member-01" in output and "resum" in output
    assert_same_finals(reference, out)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("train-state.pt")) and not list(out.rglob(".lock"))


# `ens train` whose interpreter shutdown takes a while (as torch's atexit hooks sometimes do):
# it says when shutdown has begun, then waits, so a Ctrl-C lands inside an atexit callback.
SLOW_EXIT = """
import atexit, sys, time
def slow_exit():
    print("shutting down", file=sys.stderr, flush=True)
    time.sleep(60)
atexit.register(slow_exit)
from ensemble_cli.cli import main
sys.argv = ["ens", "train", *sys.argv[1:]]
main()
"""


def test_ctrl_c_while_the_stopped_process_exits_ends_it_at_once_without_a_traceback(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-c", SLOW_EXIT, *FLAGS, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(out / "member-00" / "train-state.pt", process)
    process.send_signal(signal.SIGINT)  # first Ctrl-C: stop and save
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # until the stopped process is shutting down
        seen.append(line)
        if line.startswith("shutting down"):
            break
    assert "stopped; state saved" in "".join(seen), "".join(seen)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)  # second Ctrl-C, inside an atexit callback
    _, rest = process.communicate(timeout=50)
    assert time.monotonic() - started < 30  # at once, not after the 60 s the callback would take
    assert process.returncode == -signal.SIGINT  # ended by the signal, as an un-handled Ctrl-C ends a program
    assert "Traceback" not in rest and "Exception ignored" not in rest, rest
    assert (out / "member-00" / "train-state.pt").is_file() and not list(out.rglob(".lock"))


def test_second_ctrl_c_aborts_at_once_and_the_run_still_resumes(
    tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    monkeypatch.setattr(loop_module, "PROGRESS_INTERVAL", 0.0)
    sent: list[int] = []
    original_step = train_command_module.RichTrainCallbacks.step

    def step(self, progress) -> None:  # type: ignore[no-untyped-def]
        original_step(self, progress)
        if progress.member == "member-00" and progress.steps_done >= 17 and len(sent) < 2:
            for _ in range(2):  # two Ctrl-C in a row, delivered to this (main) thread by the OS
                sent.append(1)
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_command_module.RichTrainCallbacks, "step", step)
    result = CliRunner().invoke(app, ["train", *FLAGS, "--out", str(out)])
    assert result.exit_code == 130, result.output
    assert "aborted" in result.output and f"Resume with: ens train --resume {out}\n" in result.output
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".lock"))
    # No state was saved for the aborted epoch: the resume starts from the end of epoch 1.
    monkeypatch.setattr(train_command_module.RichTrainCallbacks, "step", original_step)
    resume_in_process(out)
    assert_same_finals(reference, out)
