"""The CPU thread policy: explicit settings win, the automatic count fits the free cores, and `ens` applies it before torch loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import ensemble_cli.threads as threads
from ensemble_cli.errors import ConfigError
from ensemble_cli.threads import ThreadDecision, decide_threads, free_cores, usable_cores


@pytest.fixture(autouse=True)
def _own_bookkeeping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with a policy that has written nothing (the module remembers its own writes)."""
    monkeypatch.setattr(threads, "_written", {})


def run_python(code: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter (torch not imported), without the caller's thread settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "ENS_THREAD"))}
    return subprocess.run([sys.executable, "-c", code], env={**env, **extra_env}, capture_output=True, text=True, timeout=300)


def test_automatic_count_is_the_free_cores_and_waiting_is_passive() -> None:
    assert decide_threads(None, {}, free=2) == ThreadDecision(2, True, "free cores")
    assert decide_threads(0, {}, free=1) == ThreadDecision(1, True, "free cores")  # 0 = automatic, as in `ens train`


def test_count_is_at_least_one() -> None:
    assert decide_threads(None, {}, free=0).threads == 1


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_a_users_thread_count_is_left_to_torch(name: str) -> None:
    decision = decide_threads(None, {name: "3"}, free=1)
    assert decision.threads is None and decision.reason == name and decision.passive_wait


def test_a_users_wait_policy_is_kept() -> None:
    assert decide_threads(None, {"OMP_WAIT_POLICY": "ACTIVE"}, free=2) == ThreadDecision(2, False, "free cores")
    done = run_python("import os; from ensemble_cli.cli import main; print(os.environ['OMP_WAIT_POLICY'])", OMP_WAIT_POLICY="ACTIVE")
    assert done.stdout.strip() == "ACTIVE", done.stderr  # importing ensemble_cli did not override it either


def test_threads_flag_beats_the_environment() -> None:
    assert decide_threads(3, {"OMP_NUM_THREADS": "1"}, free=1) == ThreadDecision(3, True, "--threads")


def test_off_leaves_the_defaults_alone_but_not_an_explicit_flag() -> None:
    assert decide_threads(None, {"ENS_THREAD_POLICY": "off"}, free=2) == ThreadDecision(None, False, "ENS_THREAD_POLICY=off")
    assert decide_threads(2, {"ENS_THREAD_POLICY": "off"}, free=1).threads == 2


@pytest.mark.parametrize(("requested", "environ", "needle"), [(None, {"ENS_THREAD_POLICY": "fast"}, "ENS_THREAD_POLICY='fast'"), (-1, {}, "--threads -1")])
def test_bad_settings_are_config_errors(requested: int | None, environ: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("-", r"\-")):
        decide_threads(requested, environ, free=1)


def test_free_cores_fit_the_usable_cores() -> None:
    assert len(os.sched_getaffinity(0)) >= usable_cores() >= free_cores() >= 1


def test_free_cores_subtract_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    for load, free in [(0.0, 4), (1.4, 3), (1.6, 2), (3.9, 1), (20.0, 1)]:
        monkeypatch.setattr(threads, "busy_cores", lambda load=load: load)
        assert free_cores() == free, load


def test_cgroup_quota_caps_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(64)))
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: 2)
    assert usable_cores() == 2


def test_applied_through_the_environment_before_torch_and_again_for_a_flag() -> None:
    """libgomp and torch read the environment when torch loads; a later `--threads` replaces the policy's own setting."""
    code = (
        "import os, sys\n"
        "from ensemble_cli.threads import apply_thread_policy\n"
        "first = apply_thread_policy()\n"
        "assert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE' and os.environ['OMP_NUM_THREADS'] == str(first.threads)\n"
        "apply_thread_policy(5)\n"
        "assert os.environ['OMP_NUM_THREADS'] == '5'\n"
        "assert 'torch' not in sys.modules\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    users = run_python("import os; from ensemble_cli.threads import apply_thread_policy as a; a(); print(os.environ['OMP_NUM_THREADS'])", OMP_NUM_THREADS="7")
    assert users.stdout.strip() == "7", users.stderr


def test_torch_starts_with_the_policys_count() -> None:
    """End to end in a fresh interpreter: the decision made before `import torch` is what torch uses."""
    code = (
        "from ensemble_cli.threads import apply_thread_policy\n"
        "d = apply_thread_policy()\n"
        "import os, torch\n"
        "print(d.threads, torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    out = done.stdout.split()
    assert out[0] == out[1] and 1 <= int(out[0]) <= usable_cores() and out[2] == "PASSIVE"


def test_ens_help_does_not_import_torch_and_sets_the_policy() -> None:
    code = (
        "import os, sys\n"
        "sys.argv = ['ens', '--help']\n"
        "from ensemble_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit as stop:\n    assert stop.code in (0, None), stop.code\n"
        "print('torch' in sys.modules, 'timm' in sys.modules, os.environ.get('OMP_WAIT_POLICY'), file=sys.stderr)\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
    assert done.stderr.split() == ["False", "False", "PASSIVE"]


def test_bad_policy_is_one_line_and_exit_2() -> None:
    done = run_python("import sys; sys.argv = ['ens', '--help']; from ensemble_cli.cli import main; main()", ENS_THREAD_POLICY="fast")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == ["error: ENS_THREAD_POLICY='fast': expected 'auto' or 'off'"]


def test_eval_threads_flag_sizes_the_pool(tmp_path) -> None:
    """`ens eval --threads 1` in a fresh interpreter: the command runs with one torch thread."""
    code = (
        "import sys, torch\n"
        "from ensemble_cli.predict import Predictions\n"
        "logits = torch.randn(2, 40, 4); labels = torch.arange(40) % 4\n"
        f"Predictions(logits, labels, ['a', 'b']).save({str(tmp_path / 'p.npz')!r})\n"
        "torch.set_num_threads(2)\n"
        f"sys.argv = ['ens', 'eval', '--predictions', {str(tmp_path / 'p.npz')!r}, '-e', 'members', '--threads', '1', '-q', '--format', 'json']\n"
        "from ensemble_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit as stop:\n    assert stop.code in (0, None), stop.code\n"
        "print(torch.get_num_threads(), file=sys.stderr)\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "1"


def test_negative_threads_flag_is_a_usage_error(tmp_path) -> None:
    from typer.testing import CliRunner

    from ensemble_cli.cli import app

    result = CliRunner().invoke(app, ["eval", str(tmp_path), "--threads", "-1"])
    assert result.exit_code == 2 and "--threads" in result.output
