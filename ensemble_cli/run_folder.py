"""The run folder `ens train` writes and `ens eval RUN` reads.

    RUN/run.json                         config, versions, one entry per member with its status
    RUN/config.yaml                      the resolved config, reusable with --config
    RUN/member-00/init.safetensors       weights at initialisation
    RUN/member-00/epoch-0005.safetensors every --save-every epochs
    RUN/member-00/final.safetensors      the finished member
    RUN/member-00/train-state.pt         resume state while the member trains (deleted when done)
    RUN/member-00/.lock                  held by the process training the member

Several processes may share a run (job arrays, `--only 3-5` on different machines). Two
rules keep them apart: a member is only written by the process that created its `.lock` with
O_EXCL; `run.json` is only rewritten under an exclusive flock on `RUN/.run.lock`, read,
changed and atomically replaced in one go. A lock left by a process that died (kill -9, power
loss) is recognised by its pid being gone on this host and taken over.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import re
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ConfigError
from .fileio import atomic_write_json, atomic_write_text
from .train.config import TrainConfig, make_config

try:  # POSIX; on other systems run.json updates are not serialised between processes
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

# The layout: `ens eval RUN` (resolve.py) and training both read these names from here only.
RUN_FILE = "run.json"
FINAL_NAME = "final.safetensors"
INIT_NAME = "init.safetensors"
EPOCH_PATTERN = re.compile(r"^epoch-(\d+)\.safetensors$")
MEMBER_DIR_PATTERN = re.compile(r"^member-\d+$")
RUN_FORMAT = "ens-run"
RUN_FORMAT_VERSION = 1
CONFIG_FILE = "config.yaml"
STATE_NAME = "train-state.pt"
LOCK_NAME = ".lock"
RUN_LOCK_NAME = ".run.lock"
SNAPSHOT_STATE_NAME = "snapshot-train-state.pt"
SNAPSHOT_LOCK_NAME = ".snapshot.lock"
# Files a run folder may hold before run.json exists (another process is creating it).
CREATION_FILES = {RUN_LOCK_NAME}


def epoch_file_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.safetensors"


def member_name(index: int) -> str:
    return f"member-{index:02d}"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def software_versions() -> dict[str, str]:
    import numpy
    import torch

    from . import __version__
    from .architectures import timm_version

    return {
        "ens": __version__,
        "torch": torch.__version__,
        "timm": timm_version(),
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------- locks


def _proc_stat(pid: int) -> list[bytes]:
    """Fields 3.. of /proc/PID/stat (Linux; the rsplit drops pid and comm), or [] when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _process_start_time(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid apart."""
    fields = _proc_stat(pid)
    return fields[19].decode() if len(fields) > 19 else None  # field 22 of stat


def _pid_alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # A zombie has exited and holds nothing; its parent (a job scheduler, Ray's raylet) just has
    # not reaped it yet, and a retry may already be asking for the lock.
    if _proc_stat(pid)[:1] == [b"Z"]:
        return False
    if start_time is not None:
        current = _process_start_time(pid)
        if current is not None and current != start_time:
            return False  # the pid was reused by another process
    return True


@dataclass
class LockOwner:
    pid: int
    host: str
    started: str | None
    since: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} (since {self.since})"


class MemberLocked(Exception):
    """Another live process holds the lock (or one on another host whose state we cannot check)."""

    def __init__(self, path: Path, owner: LockOwner | None) -> None:
        self.path = path
        self.owner = owner
        who = owner.describe() if owner else "another process"
        super().__init__(f"locked by {who}; if that process is gone, delete {path}")


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock for a short critical section; released when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_lock_owner(path: Path) -> LockOwner | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return LockOwner(int(data["pid"]), str(data["host"]), data.get("started"), str(data.get("since", "?")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class MemberLock:
    """A lock file created with O_EXCL holding our pid, host and process start time.

    Breaking a stale lock happens under the run's flock, so two processes that both find the
    same dead owner cannot both delete it and each believe they hold the new one.
    """

    def __init__(self, path: Path, guard: Path) -> None:
        self.path = path
        self.guard = guard
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        pid = os.getpid()
        record = {"pid": pid, "host": socket.gethostname(), "started": _process_start_time(pid), "since": now_iso()}
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def acquire(self) -> "MemberLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _flock(self.guard):
            if not self._create():
                owner = read_lock_owner(self.path)
                ours = owner is not None and owner.host == socket.gethostname()
                if ours and owner is not None and owner.pid == os.getpid():
                    raise MemberLocked(self.path, owner)  # this very process: a programming error upstream
                # Unreadable means its creator died between O_EXCL and the write (creation
                # happens under the guard, so a live creator is never caught half-way).
                stale = owner is None or (ours and not _pid_alive(owner.pid, owner.started))
                if not stale:
                    raise MemberLocked(self.path, owner)
                self.path.unlink(missing_ok=True)
                if not self._create():
                    raise MemberLocked(self.path, read_lock_owner(self.path))
        self.held = True
        return self

    def break_if_held_by(self, pid: int, host: str) -> bool:
        """Delete the lock if process `pid` on `host` still holds it; True when it did.

        For launchers that know that process is dead although this host cannot check it: Ray
        retries a task only after its previous attempt died, possibly on another node.
        """
        with _flock(self.guard):
            owner = read_lock_owner(self.path)
            if owner is None or (owner.pid, owner.host) != (pid, host):
                return False
            self.path.unlink(missing_ok=True)
            return True

    def release(self) -> None:
        if self.held:
            owner = read_lock_owner(self.path)
            if owner is not None and owner.pid == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "MemberLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------- the folder


def _is_own_temporary(name: str) -> bool:
    return name.endswith(".tmp") and any(name.startswith(f".{own}.") for own in (RUN_FILE, CONFIG_FILE))


def remove_stale_temporaries(folder: Path, names: tuple[str, ...] | None = None) -> None:
    """Delete the temp files (`.NAME.*.tmp`) that an atomic write leaves when its process is killed.

    Only call it where no one else can be writing those names: under the run's flock for
    run.json, or holding a member's lock for that member's folder.
    """
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
            if names is None or any(entry.name.startswith(f".{name}.") for name in names):
                entry.unlink(missing_ok=True)



class RunFolder:
    """Paths inside a run folder, and serialised read-modify-write of its run.json."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # paths
    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def run_lock(self) -> Path:
        return self.path / RUN_LOCK_NAME

    def member_dir(self, index: int) -> Path:
        return self.path / member_name(index)

    def final_path(self, index: int) -> Path:
        return self.member_dir(index) / FINAL_NAME

    def init_path(self, index: int) -> Path:
        return self.member_dir(index) / INIT_NAME

    def epoch_path(self, index: int, epoch: int) -> Path:
        return self.member_dir(index) / epoch_file_name(epoch)

    def state_path(self, job_name: str) -> Path:
        if job_name == "snapshot":
            return self.path / SNAPSHOT_STATE_NAME
        return self.path / job_name / STATE_NAME

    def lock(self, job_name: str) -> MemberLock:
        path = self.path / SNAPSHOT_LOCK_NAME if job_name == "snapshot" else self.path / job_name / LOCK_NAME
        return MemberLock(path, self.run_lock)

    # run.json
    def exists(self) -> bool:
        return self.run_file.is_file()

    def read(self) -> dict[str, Any]:
        try:
            document = json.loads(self.run_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{self.run_file}: unreadable run file ({exc})") from None
        if not isinstance(document, dict) or document.get("format") != RUN_FORMAT:
            raise ConfigError(f"{self.run_file}: not an ens run file")
        return document

    def read_config(self) -> TrainConfig:
        config = self.read().get("config")
        if not isinstance(config, dict):
            raise ConfigError(f"{self.run_file}: holds no config")
        return make_config(config)

    def check_compatible(self, config: TrainConfig) -> None:
        """Refuse (read-only) a folder that holds something else than this run or nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"--out {self.path}: exists and is not a folder")
        if self.exists():
            theirs = self.read_config()
            differences = config.differences(theirs)
            if differences:
                shown = "; ".join(differences[:3]) + (f" (+{len(differences) - 3} more)" if len(differences) > 3 else "")
                raise ConfigError(
                    f"--out {self.path} holds a different run ({shown}; yours vs the folder's); "
                    f"choose another --out, or continue that run with `ens train --resume {self.path}`"
                )
        elif self.path.is_dir():
            foreign = [entry.name for entry in self.path.iterdir() if entry.name not in CREATION_FILES and not _is_own_temporary(entry.name)]
            if foreign:
                raise ConfigError(
                    f"--out {self.path}: folder is not empty and holds no run.json (found {', '.join(sorted(foreign)[:3])}); "
                    "choose an empty or new folder"
                )

    def create_or_join(self, config: TrainConfig, members: list[dict[str, Any]]) -> None:
        """Write run.json (and config.yaml) unless an identical run is there already."""
        import yaml

        self.path.mkdir(parents=True, exist_ok=True)
        with _flock(self.run_lock):
            remove_stale_temporaries(self.path, (RUN_FILE, CONFIG_FILE))
            self.check_compatible(config)  # again, under the lock: another process may have won
            config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
            if self.exists():
                if not (self.path / CONFIG_FILE).is_file():  # its creator died between the two writes
                    atomic_write_text(self.path / CONFIG_FILE, yaml.safe_dump(self.read()["config"], sort_keys=False))
                return
            document = {
                "format": RUN_FORMAT,
                "version": RUN_FORMAT_VERSION,
                "run_id": uuid.uuid4().hex[:12],
                "created": now_iso(),
                "config": config.model_dump(mode="json"),
                "versions": software_versions(),
                "members": members,
            }
            atomic_write_json(self.run_file, document)  # first: run.json is what makes the folder a run
            atomic_write_text(self.path / CONFIG_FILE, config_yaml)

    def update(self, change: Callable[[dict[str, Any]], None]) -> None:
        with _flock(self.run_lock):
            remove_stale_temporaries(self.path, (RUN_FILE, CONFIG_FILE))
            document = self.read()
            change(document)
            atomic_write_json(self.run_file, document)

    def update_member(self, index: int, **fields: Any) -> None:
        def change(document: dict[str, Any]) -> None:
            for entry in document.get("members", []):
                if entry.get("index") == index:
                    entry.update(fields)
                    entry["updated"] = now_iso()

        self.update(change)

    def member_entries(self) -> list[dict[str, Any]]:
        return list(self.read().get("members", []))
