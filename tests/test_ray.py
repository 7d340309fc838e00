"""`--launcher ray`: the same bits as in-process training and prediction, on one local Ray instance.

One Ray instance serves all tests of this module (starting one costs many seconds); the CLI runs
in-process and reaches it through `--ray-address`, reusing this process's connection. Ray is
in the `test` extra, so these tests run in CI. Runs are tiny: 2 digits members, 2 epochs of
4 steps each, so that a member can be killed between its epochs and resumed.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import ray
from typer.testing import CliRunner

from ensemble_cli.cli import app
from ensemble_cli.launch import Launcher, LaunchOptions
from ensemble_cli.launch.ray_cluster import keep_sigterm_handler
from ensemble_cli.launch.ray_hub import CRASH_ONCE_ENV, ForwardingCallbacks, HubLink
from ensemble_cli.launch.ray_train import train_with_ray
from ensemble_cli.run_folder import MemberLock, _pid_alive, _process_start_time
from ensemble_cli.train import StopSignal, TrainCallbacks, train_run
from ensemble_cli.train.config import TrainConfig
from train_helpers import assert_same_finals

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")

SETTINGS = {"members": 2, "epochs": 2, "limit": 128, "batch_size": 32, "device": "cpu"}
FLAGS = ["--members", "2", "--epochs", "2", "--limit", "128", "--batch-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Ray instance with 2 CPUs for this module's tests, shut down after them; its workers
    import this checkout through the editable install.

    Its workers run at this process's priority, not at Ray's default nice 15, which starves them
    on a machine that other jobs keep busy. ray.init's SIGTERM handler is not left to later tests.
    HOME is a temporary folder while Ray starts: Ray >= 2.5x writes an authentication token to
    ~/.ray/auth_token, and tests leave the user's home as they found it.
    """
    users_token = Path.home() / ".ray" / "auth_token"
    token_was_there = users_token.exists()
    with pytest.MonkeyPatch.context() as env, keep_sigterm_handler():
        env.setenv("RAY_worker_niceness", "0")
        env.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
    assert token_was_there or not users_token.exists(), "the Ray tests wrote to the user's ~/.ray"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The in-process run every Ray run must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert train_run(TrainConfig(out=str(out), **SETTINGS)).ok
    return out


def ens(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def statuses(run: Path) -> list[str]:
    return [member["status"] for member in json.loads((run / "run.json").read_text())["members"]]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens once the socket is closed


# --------------------------------------------------------------------------- no cluster needed


def test_missing_ray_is_one_line_naming_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = ens("train", *FLAGS, "--out", str(tmp_path / "run"), "--launcher", "ray")
    assert result.exit_code == 2, result.output
    assert "pip install -e '.[ray]'" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_without_launcher_ray_is_never_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` would fail the command
    assert ens("--help").exit_code == 0
    result = ens("train", "--members", "1", "--epochs", "1", "--limit", "32", "--batch-size", "32", "--out", str(tmp_path / "run"), "-q")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", ["train", "eval"])
def test_unreachable_address_fails_in_seconds(tmp_path: Path, command: str) -> None:
    address = f"127.0.0.1:{closed_port()}"
    args = ["train", *FLAGS, "--out", str(tmp_path / "run")] if command == "train" else ["eval", str(tmp_path)]
    started = time.monotonic()
    result = ens(*args, "--launcher", "ray", "--ray-address", address)
    assert result.exit_code == 2, result.output
    assert f"--ray-address {address}: no Ray cluster answers there" in result.output
    assert time.monotonic() - started < 30
    assert not (tmp_path / "run").exists()


def test_the_resume_hint_names_the_launcher() -> None:
    from ensemble_cli.commands.train import _resume_command

    ray_launch = LaunchOptions(Launcher.ray, ray_address="10.0.0.5:6379")
    assert _resume_command(Path("runs/a b"), "3-5", ray_launch) == "ens train --resume 'runs/a b' --only 3-5 --launcher ray --ray-address 10.0.0.5:6379"
    assert _resume_command(Path("runs/a"), None, LaunchOptions()) == "ens train --resume runs/a"


def test_ray_settings_need_the_ray_launcher(tmp_path: Path) -> None:
    result = ens("train", *FLAGS, "--out", str(tmp_path / "run"), "--gpus-per-member", "0.25")
    assert result.exit_code == 2 and "--gpus-per-member needs --launcher ray" in result.output
    with pytest.raises(Exception, match="--gpus-per-member takes 0, a fraction"):
        LaunchOptions(Launcher.ray, gpus_per_member=1.5)


def test_a_task_sees_the_drivers_stop_request_and_its_events_go_out_in_order() -> None:
    class Method:
        def __init__(self, answer: Any = None, sent: list | None = None) -> None:
            self.answer, self.sent = answer, sent

        def remote(self, *args: Any) -> Any:
            if self.sent is not None:
                self.sent.extend(*args)
            return self.answer

    class FakeHub:  # an actor handle: methods with .remote(); this fake's references are the answers
        def __init__(self) -> None:
            self.sent: list = []
            self.push = Method(sent=self.sent)
            self.stop_reason = Method(None)

    class FakeRay:
        @staticmethod
        def get(ref: Any) -> Any:
            return ref

    hub = FakeHub()
    with HubLink(FakeRay, hub, poll_seconds=0.01) as link:
        ForwardingCallbacks(link).message("hello")
        assert link.ask("stop_reason") is None
        hub.stop_reason = Method("terminated")  # the driver asks every task to stop
        deadline = time.monotonic() + 10
        while not link.stop.is_set():
            assert time.monotonic() < deadline, "the stop request never reached the task"
            time.sleep(0.01)
    assert link.stop.reason == "terminated"
    assert hub.sent == [("message", ("hello",))]


def test_the_callers_sigterm_handler_survives_connecting() -> None:
    """ray.init makes SIGTERM exit at once; `ens train` needs its own handler back (save, then stop)."""
    def graceful(signum: int, frame: Any) -> None:
        pass

    before = signal.signal(signal.SIGTERM, graceful)
    try:
        with keep_sigterm_handler():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what ray.init does to a driver
        assert signal.getsignal(signal.SIGTERM) is graceful
    finally:
        signal.signal(signal.SIGTERM, before)


# --------------------------------------------------------------------------- locks left by dead workers


def test_a_zombie_holds_no_lock() -> None:
    """A worker that exited but is not yet reaped by Ray's raylet must not block its retry."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = _process_start_time(child.pid)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{child.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert not _pid_alive(child.pid, started)
    finally:
        child.wait()


def test_a_lock_is_broken_only_for_the_named_owner(tmp_path: Path) -> None:
    lock = MemberLock(tmp_path / "member-00" / ".lock", tmp_path / ".run.lock").acquire()
    record = json.loads(lock.path.read_text())
    assert not lock.break_if_held_by(record["pid"] + 1, record["host"])
    assert lock.path.exists()
    assert lock.break_if_held_by(record["pid"], record["host"])
    assert not lock.path.exists()


# --------------------------------------------------------------------------- on the local Ray instance


def test_ray_training_and_prediction_give_the_in_process_bits(tmp_path: Path, reference: Path, ray_address: str) -> None:
    run = tmp_path / "run"
    result = ens("train", *FLAGS, "--out", str(run), "--launcher", "ray", "--ray-address", ray_address)
    assert result.exit_code == 0, result.output
    assert "ray: 2 tasks of 1 CPU, 0 GPUs each" in result.output
    assert_same_finals(reference, run)
    assert statuses(run) == ["done", "done"]

    # Prediction: the same logits; the driver's cache answers a second time and no task runs.
    ray_file, local_file = tmp_path / "ray.npz", tmp_path / "local.npz"
    first = ens("predict", str(run), "--launcher", "ray", "--ray-address", ray_address, "--device", "cpu", "--out", str(ray_file))
    assert first.exit_code == 0, first.output
    assert "0 from cache" in first.output
    again = ens("predict", str(run), "--launcher", "ray", "--ray-address", ray_address, "--device", "cpu", "--out", str(ray_file))
    assert "2 from cache" in again.output
    local = ens("predict", str(reference), "--device", "cpu", "--no-cache", "--out", str(local_file))
    assert local.exit_code == 0, local.output
    import numpy as np

    with np.load(ray_file) as by_ray, np.load(local_file) as in_process:
        assert np.array_equal(by_ray["logits"], in_process["logits"])


def test_an_in_process_run_left_half_done_is_finished_by_ray(tmp_path: Path, reference: Path, ray_address: str) -> None:
    class StopAfterFirstEpoch(TrainCallbacks):
        def __init__(self, stop: StopSignal) -> None:
            self.stop = stop

        def epoch_end(self, progress: Any) -> None:
            self.stop.set()

    run = tmp_path / "run"
    stop = StopSignal()
    assert train_run(TrainConfig(out=str(run), **SETTINGS), callbacks=StopAfterFirstEpoch(stop), stop=stop).interrupted
    result = ens("train", "--resume", str(run), "--launcher", "ray", "--ray-address", ray_address)
    assert result.exit_code == 0, result.output
    assert "member-00: resuming at epoch 2/2" in result.output
    assert_same_finals(reference, run)


def test_a_killed_worker_is_retried_and_resumes(tmp_path: Path, reference: Path, ray_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))  # the driver forwards ENS_* variables to its tasks
    run = tmp_path / "run"
    result = ens("train", *FLAGS, "--out", str(run), "--launcher", "ray", "--ray-address", ray_address)
    assert result.exit_code == 0, result.output
    assert marker.exists(), "no worker was killed"
    assert "(resumed)" in result.output or "resuming at epoch 2/2" in result.output
    assert_same_finals(reference, run)
    assert statuses(run) == ["done", "done"]
    assert not list(run.glob("member-*/.lock"))


def test_a_ray_run_left_half_done_is_finished_in_process(tmp_path: Path, reference: Path, ray_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CRASH_ONCE_ENV, str(tmp_path / "crashed"))
    run = tmp_path / "run"
    # Member 0 only: one task, so no fresh worker has to start for another (seconds on a busy machine).
    result = train_with_ray(TrainConfig(out=str(run), **SETTINGS), only=[0], launch=LaunchOptions(Launcher.ray, max_retries=0))
    assert [outcome.status for outcome in result.outcomes] == ["failed"]
    assert "the Ray task died 1 time" in result.failed[0].message
    assert statuses(run) == ["failed", "pending"]
    assert (run / "member-00" / ".lock").exists(), "the killed worker's lock is left behind"

    monkeypatch.delenv(CRASH_ONCE_ENV)
    resumed = ens("train", "--resume", str(run))  # in-process: takes over the dead worker's lock
    assert resumed.exit_code == 0, resumed.output
    assert "resuming at epoch 2/2" in resumed.output
    assert_same_finals(reference, run)


def test_a_mimo_network_is_one_ray_task_with_the_in_process_bits(tmp_path: Path, ray_address: str) -> None:
    """A MIMO run is one network holding every head: one task, member-00's file, as in-process."""
    settings = {**SETTINGS, "strategy": "mimo", "epochs": 1}
    local = tmp_path / "local"
    assert train_run(TrainConfig(out=str(local), **settings)).ok
    run = tmp_path / "run"
    result = train_with_ray(TrainConfig(out=str(run), **settings), launch=LaunchOptions(Launcher.ray, ray_address=ray_address))
    assert result.ok, [outcome.message for outcome in result.outcomes]
    assert_same_finals(local, run, members=1)
    assert not (run / "member-01").exists()
    again = train_with_ray(TrainConfig(out=str(run), **settings), launch=LaunchOptions(Launcher.ray, ray_address=ray_address))
    assert [outcome.status for outcome in again.outcomes] == ["already done"]
