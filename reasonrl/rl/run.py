"""A run directory's identity: the resolved config it was started with, and the rules of a rerun.

`RUN/config.yaml` holds the resolved config (every key, defaults included). Rerunning the same
command resumes from the latest checkpoint; rerunning with other settings is refused with the
differing keys named, unless the user starts afresh (`overwrite`: the old run is deleted) or
accepts the changes (`accept_changes`: they are recorded in `RUN/config_changes.jsonl`). Keys that
do not change what is trained (how often to save or evaluate, which trackers, where it runs: a run
started on Ray may resume in one process and back) may change freely, and the run directory may be
named another way (`runs/e/`, `./runs/e`, its absolute path). A run directory another live process
is running in is refused (`RUN/.claim` names it), and so is one that is, or holds, a path the run
reads (its starting model, its data).
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from reasonrl.config import differences
from reasonrl.scale.config import ClusterConfig

CONFIG_FILE = "config.yaml"
CLAIM_FILE = ".claim"  # the pid and start time of the process running in the directory
RUN_FILES = (CONFIG_FILE, "metrics.jsonl", "checkpoints")  # a directory holding none of these is not a run
WORK = ("metrics.jsonl", "checkpoints")  # a run that wrote neither never logged a step
FREE_KEYS = {"train.save_every", "train.keep_checkpoints", "train.trackers", "train.eval_every",
             "rollout.remote_engine", "cluster", *(f"cluster.{f.name}" for f in dataclasses.fields(ClusterConfig))}
# (the last ones say where it runs; a run saved before they existed resumes without --accept-changes)


class RunMismatch(ValueError):
    """The run directory holds a run started with other settings."""


def open_run(run_dir: str | Path, config: dict[str, Any], *, overwrite: bool = False, accept_changes: bool = False,
             free_keys: set[str] = FREE_KEYS, console: bool = True, work: tuple[str, ...] = WORK,
             inputs: Sequence[str | Path | None] = (), resumes: bool = True, save: bool = True) -> Path:
    """Check that `config` may run in `run_dir` (see the module docstring), then save and print it.
    `work`: what a run writes once it has done something (before that, its saved config binds nothing).
    `inputs`: paths the run reads (the model it starts from, its data): a run directory that is one
    of them or holds one is refused, since writing (or --overwrite) would destroy it. `resumes`:
    False for a job that starts afresh on every rerun (no --accept-changes to offer). `save`: False
    leaves a saved config.yaml as it is until the caller's `save_config`, once what can still refuse
    the run (an environment that does not load) has passed: a refused rerun changes nothing."""
    run_dir = Path(run_dir)
    _refuse_inputs(run_dir, inputs)
    _refuse_if_busy(run_dir)
    if overwrite:
        _delete_run(run_dir)
    if run_dir.exists() and not is_run_dir(run_dir) and (not run_dir.is_dir() or _holds_more_than_a_claim(run_dir)):
        raise RunMismatch(f"{run_dir} exists and is not a reasonrl run directory (no {', '.join(RUN_FILES)}); "
                          "choose a new or empty directory for the run")
    changed = _changes(run_dir, config, free_keys, work)
    if changed and not (accept_changes and resumes):
        raise RunMismatch(_mismatch_message(run_dir, changed, resumes))
    run_dir.mkdir(parents=True, exist_ok=True)
    _claim(run_dir)
    text = _config_text(config)
    if save or not (run_dir / CONFIG_FILE).is_file():  # (a new run's config marks the directory as a run's at once)
        _write_config(run_dir, text, changed)
    if console:
        print(f"config ({run_dir / CONFIG_FILE}):\n" + "".join(f"  {line}\n" for line in text.splitlines()),
              file=sys.stderr, end="", flush=True)
    return run_dir


def save_config(run_dir: str | Path, config: dict[str, Any], free_keys: set[str] = FREE_KEYS,
                work: tuple[str, ...] = WORK) -> None:
    """Write `config` as the run's config.yaml, recording how it differs from the saved one (the
    changes `open_run` accepted) in config_changes.jsonl."""
    run_dir = Path(run_dir)
    _write_config(run_dir, _config_text(config), _changes(run_dir, config, free_keys, work))


def _write_config(run_dir: Path, text: str, changed: list[tuple[str, Any, Any]]) -> None:
    if changed:
        with (run_dir / "config_changes.jsonl").open("a") as f:
            f.write(json.dumps({"time": time.time(), "changes": [list(d) for d in changed]}) + "\n")
    (run_dir / CONFIG_FILE).write_text(text)


def _config_text(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, default_flow_style=None, sort_keys=False, width=110)


RESPELLED = {"engine.latent_exit": ("steps", None)}
"""Saved values a later default spells otherwise, meaning the same for the runs saved before it: latent_exit
None (the checkpoint's exit) is "steps" for every checkpoint made before checkpoints recorded one."""


def _changes(run_dir: Path, config: dict[str, Any], free_keys: set[str],
             work: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """The keys whose values in `config` differ from the saved config's, where that binds (its run did work),
    but for `RESPELLED` defaults."""
    saved_path = run_dir / CONFIG_FILE
    if not saved_path.is_file() or not any((run_dir / name).exists() for name in work):  # it never did anything
        return []
    saved = yaml.safe_load(saved_path.read_text()) or {}
    return [d for d in differences(saved, config) if d[0] not in free_keys and not _names_run_dir(run_dir, *d[1:])
            and RESPELLED.get(d[0]) != d[1:]]


def _names_run_dir(run_dir: Path, saved: Any, now: Any) -> bool:
    """Whether two spellings of a value both name the run directory from here (`runs/e`, `runs/e/`,
    `./runs/e`, its absolute path). A relative saved one from another working directory names
    another place and stays a difference: the run's other relative paths would be read from here."""
    here = run_dir.resolve()
    return all(isinstance(v, str) and v and Path(v).resolve() == here for v in (saved, now))


def _refuse_inputs(run_dir: Path, inputs: Sequence[str | Path | None]) -> None:
    here = run_dir.resolve()
    for path in filter(None, inputs):
        there = Path(path).resolve()
        if there == here or here in there.parents:
            raise RunMismatch(f"{run_dir} {'is' if there == here else 'holds'} {path}, which this run reads: writing "
                              "its output there would destroy it; choose another directory")


def _refuse_if_busy(run_dir: Path) -> None:
    """A run directory another live process is running in (two reruns of one command at once both
    resumed from the same checkpoint and interleaved their steps in metrics.jsonl) is refused."""
    holder = _holder(run_dir / CLAIM_FILE)
    if holder is not None and holder != os.getpid():
        raise RunMismatch(f"{run_dir} is in use by another process (pid {holder}); wait for it to end, or stop it")


def _claim(run_dir: Path) -> None:
    """Mark the run directory as this process's (its pid and start time: a claim outlives a killed
    process only until that pid is seen to be gone). Check and write hold a lock on the claim file,
    so of two processes claiming at once the second sees the first's claim."""
    with open(run_dir / CLAIM_FILE, "a+") as claim:
        fcntl.flock(claim, fcntl.LOCK_EX)  # (released when the file closes)
        _refuse_if_busy(run_dir)
        claim.truncate(0)
        claim.write(f"{os.getpid()} {_started(os.getpid())}\n")


def _holder(claim: Path) -> int | None:
    """The live process that claimed a run directory, if any."""
    try:
        pid_text, started = claim.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if started == "-":  # no /proc (not Linux): alive or not is all we can tell
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
        return pid
    return pid if _started(pid) == started else None  # gone, or its pid taken by another process


def _started(pid: int) -> str:
    """A process's start time (clock ticks since boot, /proc/PID/stat field 22), "-" where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "-" if not Path("/proc/self/stat").exists() else "gone"


def _holds_more_than_a_claim(run_dir: Path) -> bool:
    return any(p.name != CLAIM_FILE for p in run_dir.iterdir())


def _mismatch_message(run_dir: Path, changed: list[tuple[str, Any, Any]], resumes: bool = True) -> str:
    if not resumes:
        return settings_changed(f"{run_dir} holds the output of this command with other settings", changed,
                                "rerun with the saved settings, or add --overwrite to delete it and start afresh")
    return settings_changed(f"{run_dir} holds a run started with other settings", changed,
                            "rerun with the saved settings to resume it, add --overwrite to delete it and start "
                            "afresh, or --accept-changes to continue it under the new settings")


def settings_changed(head: str, changed: list[tuple[str, Any, Any]], advice: str) -> str:
    """The message refusing work made with other settings: `head`, each key saved -> now, `advice`."""
    return "\n".join([f"{head}:", *(f"  {key}: {old!r} (saved) -> {new!r} (now)" for key, old, new in changed), advice])


def is_run_dir(path: Path) -> bool:
    """A directory holding what a run writes (a directory without any of it is never moved or deleted)."""
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def _delete_run(run_dir: Path) -> None:
    if not run_dir.exists():
        return
    if not is_run_dir(run_dir):
        raise RunMismatch(f"--overwrite: {run_dir} is not a reasonrl run directory (no {', '.join(RUN_FILES)}); "
                          "refusing to delete it")
    shutil.rmtree(run_dir)
