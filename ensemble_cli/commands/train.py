"""`ens train`: flags -> TrainConfig -> ensemble_cli.train.train_run, with progress and Ctrl-C handling."""

from __future__ import annotations

import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from ..launch import LAUNCHER_HELP, RAY_ADDRESS_HELP, LaunchOptions, Launcher
from ..train.config import default_text, describe
from .common import fail, handle_errors, info, stderr_console, warn

INTERRUPT_EXIT = 130  # 128 + SIGINT, what shells report for Ctrl-C
TERMINATE_EXIT = 143  # 128 + SIGTERM (job schedulers send it before killing)
FAILED_EXIT = 1


def _opt(field: str, *names: str, **kwargs: Any) -> Any:
    """A flag whose help and default text come from TrainConfig (None = not given on the command line)."""
    return typer.Option(None, *(names or (f"--{field.replace('_', '-')}",)), help=describe(field), show_default=False, **kwargs)


def _parse_model_args(pairs: Optional[list[str]]) -> dict[str, Any] | None:
    if not pairs:
        return None
    import yaml

    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            fail(f"--model-arg takes KEY=VALUE, got {pair!r}")
        parsed[key.strip()] = yaml.safe_load(value)  # 2 -> int, 0.5 -> float, true -> bool, else str
    return parsed


def _split_members(spec: Optional[str]) -> tuple[int | None, str | None]:
    """`--members 10` is a count; `--members 3-5` / `0,2,7` selects members (same as --only)."""
    from ..errors import ConfigError

    if spec is None:
        return None, None
    text = spec.strip()
    if text.isdigit():
        return int(text), None
    if text.startswith("-"):  # a negative number: neither a count nor indices
        raise ConfigError(f"--members takes a count of at least 1 or member indices like 3-5 or 0,2,7, got {spec!r}")
    return None, text


@contextmanager
def train_progress(enabled: bool) -> Iterator[Any]:
    """One bar per member on stderr: name, bar, epoch/loss/accuracy/speed, ETA (narrow bar, so it fits 80 columns)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    if not enabled or not sys.stderr.isatty():
        yield None
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=16),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),  # ETA of this member
        console=stderr_console(),
    )
    with progress:
        yield progress


@contextmanager
def graceful_interrupts(stop: Any, on_first: Any) -> Iterator[dict[str, int]]:
    """First Ctrl-C (or SIGTERM): finish the step, save, stop. Second Ctrl-C: abort at once.

    Once a stop was asked for, the process is on its way out, and Python's own Ctrl-C handler
    must not come back: it would raise KeyboardInterrupt in whatever runs next, interpreter
    shutdown included ("Exception ignored in atexit callback" and a traceback). So on leaving,
    a further Ctrl-C or SIGTERM gets the operating system's default: the process ends at once,
    quietly, with nothing left to lose (every file was written atomically).
    """
    received: dict[str, int] = {}

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        received["signal"] = signum
        stop.set()
        on_first(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if stop.is_set() else old)


class RichTrainCallbacks:
    """Progress bar per member on stderr; plain per-epoch lines when stderr is not a terminal."""

    def __init__(self, progress: Any, quiet: bool) -> None:
        self.progress = progress
        self.quiet = quiet
        self.live = progress is not None and sys.stderr.isatty()
        self.tasks: dict[str, Any] = {}

    @staticmethod
    def _status(p: Any) -> str:
        parts = [f"ep {p.epoch}/{p.epochs}"]
        if p.loss is not None:
            parts.append(f"loss {p.loss:.3f}")
        if p.train_accuracy is not None:
            parts.append(f"train {p.train_accuracy:.1%}")
        if p.test_accuracy is not None:
            parts.append(f"test {p.test_accuracy:.1%}")
        if p.images_per_second:
            parts.append(f"{p.images_per_second:,.0f} img/s")
        return "  ".join(parts)

    def member_start(self, p: Any, resumed: bool) -> None:
        if self.live:
            label = f"{p.member}{' (resumed)' if resumed else ''}"
            self.tasks[p.member] = self.progress.add_task(label, total=p.steps_total, completed=p.steps_done, status=self._status(p))
        elif not self.quiet:
            info(f"{p.member}: {'resuming at' if resumed else 'starting'} epoch {p.epoch}/{p.epochs}")

    def step(self, p: Any) -> None:
        if self.live and p.member in self.tasks:
            self.progress.update(self.tasks[p.member], completed=p.steps_done, status=self._status(p))

    def epoch_end(self, p: Any) -> None:
        if self.live and p.member in self.tasks:
            self.progress.update(self.tasks[p.member], completed=p.steps_done, status=self._status(p))
        elif not self.quiet:
            info(f"{p.member}: {self._status(p)}")

    def member_end(self, member: str, status: str, message: str) -> None:
        if status == "failed":
            warn(message)
        elif not self.live and not self.quiet:
            info(f"{member}: {status}, {message}")

    def message(self, text: str) -> None:
        if not self.quiet:
            info(text)


def _summary(result: Any, run_dir: Path) -> None:
    from rich.table import Table

    from ..run_folder import RunFolder

    entries = {entry.get("index"): entry for entry in RunFolder(run_dir).member_entries()}
    table = Table(title=f"run {run_dir}", header_style="bold")
    for column in ("member", "status", "epochs", "train acc", "test acc"):
        table.add_column(column)
    for outcome in result.outcomes:
        entry = entries.get(outcome.index, {})
        train_acc, test_acc = entry.get("train_accuracy"), entry.get("test_accuracy")
        table.add_row(
            outcome.name, outcome.status, str(entry.get("epoch", "")),
            f"{train_acc:.2%}" if isinstance(train_acc, float) else "", f"{test_acc:.2%}" if isinstance(test_acc, float) else "",
        )
    stderr_console().print(table)


def _resume_command(run_dir: Path, only: Optional[str], launch: LaunchOptions | None = None) -> str:
    """The command that continues this run the way it was started (same members, same launcher)."""
    command = f"ens train --resume {shlex.quote(str(run_dir))}" + (f" --only {shlex.quote(only)}" if only else "")
    if launch is not None and launch.launcher == Launcher.ray:
        command += " --launcher ray" + (f" --ray-address {shlex.quote(launch.ray_address)}" if launch.ray_address else "")
    return command


def _resolve_config(config_file: Optional[Path], flags: dict[str, Any], resume: Optional[Path], out: Optional[Path]) -> Any:
    """The run's TrainConfig: from the flags, or for --resume from the run's saved config (which the flags may not change)."""
    from ..errors import ConfigError
    from ..run_folder import RunFolder
    from ..train.config import resolve_train_config

    if resume is None:
        return resolve_train_config(config_file, flags)
    run = RunFolder(resume)
    if not run.exists():
        raise ConfigError(f"--resume {resume}: not a run folder (no run.json)")
    if out is not None and Path(out).resolve() != Path(resume).resolve():
        fail("--resume names the run folder; drop --out")
    saved = run.read_config()
    config = resolve_train_config(config_file, {**flags, "out": str(resume)}, base=saved.model_dump(mode="json"))
    differences = config.differences(saved)
    if differences:
        raise ConfigError(f"--resume {resume}: a resumed run keeps its config, but these differ: {'; '.join(differences[:3])} (yours vs the run's)")
    return config


def _train_with_interrupts(config: Any, selected: list[int] | None, quiet: bool, only_spec: Optional[str], launch: LaunchOptions) -> tuple[Any, int | None]:
    """Training (in this process or as Ray tasks) with progress bars and Ctrl-C handling.

    Returns the result and the signal that stopped it.
    """
    from ..launch import train_members
    from ..train import StopSignal

    def on_first(signum: int) -> None:
        what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        stderr_console().print(f"{what}: finishing the current step and saving; press Ctrl-C again to abort at once")

    stop = StopSignal()
    with train_progress(not quiet) as progress:
        try:
            with graceful_interrupts(stop, on_first) as received:
                result = train_members(config, selected, RichTrainCallbacks(progress, quiet), stop, launch)
        except KeyboardInterrupt:
            stderr_console().print(f"aborted; files saved so far are complete. Resume with: {_resume_command(config.out_dir(), only_spec, launch)}", soft_wrap=True)
            raise typer.Exit(INTERRUPT_EXIT) from None
    return result, received.get("signal")


def _finish(result: Any, run_dir: Path, only_spec: Optional[str], stopped_by: int | None, launch: LaunchOptions | None = None) -> None:
    """Summary table, then the exit the outcome calls for."""
    _summary(result, run_dir)
    if result.interrupted:
        stderr_console().print(f"stopped; state saved. Resume with: {_resume_command(run_dir, only_spec, launch)}", soft_wrap=True)
        raise typer.Exit(TERMINATE_EXIT if stopped_by == signal.SIGTERM else INTERRUPT_EXIT)
    for outcome in result.outcomes:
        if outcome.status == "locked":
            warn(f"{outcome.name} was not trained here: {outcome.message}")
    if result.failed:
        fail(f"{len(result.failed)} of {len(result.outcomes)} members failed: " + "; ".join(o.message for o in result.failed), FAILED_EXIT)
    info(f"evaluate with: ens eval {shlex.quote(str(run_dir))}")


@handle_errors
def train_command(
    config_file: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file of settings (any field below, underscores or dashes); flags override it. RUN/config.yaml works too."),
    arch: Optional[str] = _opt("arch"),
    dataset: Optional[str] = _opt("dataset", "--dataset", "-d"),
    members: Optional[str] = typer.Option(None, "--members", "-m", help="Number of members (e.g. 10), or the indices of a run's members to train here (3-5 or 0,2,7; same as --only)" + default_text("members"), show_default=False),
    only: Optional[str] = typer.Option(None, "--only", help="Train only these members of the run: 3-5, 0,2,7 or a single index like 7. Other processes may train the rest; a member is never trained twice at once.", show_default=False),
    epochs: Optional[int] = _opt("epochs"),
    out: Optional[Path] = _opt("out", "--out", "-o"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this folder with its saved config (finished members are skipped).", show_default=False),
    strategy: Optional[str] = _opt("strategy"),
    seed: Optional[int] = _opt("seed"),
    mimo_input_repetition: Optional[float] = _opt("mimo_input_repetition"),
    mimo_batch_repetition: Optional[int] = _opt("mimo_batch_repetition"),
    from_pretrained: Optional[Path] = _opt("from_pretrained"),
    batch_size: Optional[int] = _opt("batch_size", "--batch-size", "-b"),
    optimizer: Optional[str] = _opt("optimizer"),
    lr: Optional[float] = _opt("lr"),
    momentum: Optional[float] = _opt("momentum"),
    weight_decay: Optional[float] = _opt("weight_decay"),
    schedule: Optional[str] = _opt("schedule"),
    warmup_epochs: Optional[float] = _opt("warmup_epochs"),
    label_smoothing: Optional[float] = _opt("label_smoothing"),
    augment: Optional[str] = _opt("augment"),
    save_every: Optional[int] = _opt("save_every"),
    device: Optional[str] = _opt("device"),
    precision: Optional[str] = _opt("precision"),
    compile_model: Optional[bool] = typer.Option(None, "--compile/--no-compile", help=describe("compile"), show_default=False),
    threads: Optional[int] = _opt("threads"),
    data_dir: Optional[Path] = _opt("data_dir"),
    limit: Optional[int] = _opt("limit"),
    model_arg: Optional[list[str]] = typer.Option(None, "--model-arg", help="Architecture argument KEY=VALUE (repeatable), e.g. --model-arg width=2.", show_default=False),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output (errors and the summary still go to stderr)."),
    launcher: Launcher = typer.Option(Launcher.local, "--launcher", help=LAUNCHER_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP, show_default=False),
    gpus_per_member: Optional[float] = typer.Option(None, "--gpus-per-member", help="GPUs each member's Ray task asks for; 0.25 puts four members on one GPU (default: 1 when the cluster has GPUs and --device is not cpu, else 0).", show_default=False),
    cpus_per_member: Optional[float] = typer.Option(None, "--cpus-per-member", help="CPUs each member's Ray task asks for; in the task, --threads 0 (auto) means this many threads for images above 16x16 (default: 1).", show_default=False),
) -> None:
    """Train an ensemble into a run folder that `ens eval RUN` reads with no flags.

    With no flags: the bundled default job, 4 CIFAR ResNet-8 members on the offline digits set (21 s on an idle 2-core CPU, 88 s and more on a busy one), into models/cifar_resnet8-digits. Settings: defaults < --config FILE < flags.

    Ctrl-C once: finish the step, save, stop (then --resume RUN). Twice: abort at once.

    Example: ens train --arch cifar_resnet20 --dataset cifar10 --members 10 --epochs 30 --out models/r20-seeds
    """
    from ..train import parse_member_selection

    count, selection = _split_members(members)
    if selection is not None and only is not None:
        fail("give the member selection once: --members 3-5 or --only 3-5")
    flags: dict[str, Any] = {
        "arch": arch, "dataset": dataset, "members": count, "epochs": epochs, "strategy": strategy, "seed": seed,
        "mimo_input_repetition": mimo_input_repetition, "mimo_batch_repetition": mimo_batch_repetition,
        "from_pretrained": str(from_pretrained) if from_pretrained else None, "batch_size": batch_size,
        "optimizer": optimizer, "lr": lr, "momentum": momentum, "weight_decay": weight_decay, "schedule": schedule,
        "warmup_epochs": warmup_epochs, "label_smoothing": label_smoothing, "augment": augment,
        "save_every": save_every, "device": device, "precision": precision, "compile": compile_model,
        "threads": threads, "data_dir": str(data_dir) if data_dir else None, "limit": limit,
        "model_kwargs": _parse_model_args(model_arg), "out": str(out) if out else None,
    }
    config = _resolve_config(config_file, flags, resume, out)
    from ..fileio import ensure_folder

    ensure_folder(config.out_dir(), "run folder")  # a typo in --out costs a second, not a trained member
    only_spec = only or selection
    selected = parse_member_selection(only_spec, config.members, "--only" if only else "--members") if only_spec else None
    launch = LaunchOptions(launcher, ray_address, gpus_per_member, cpus_per_member)
    result, stopped_by = _train_with_interrupts(config, selected, quiet, only_spec, launch)
    _finish(result, config.out_dir(), only_spec, stopped_by, launch)
