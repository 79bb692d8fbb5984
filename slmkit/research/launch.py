"""Running a study's runs: one at a time in this process, N at a time as processes on this machine (the cores shared
out), or through submitit (a SLURM cluster, or submitit's local executor). Each run is `slmkit train` of a recipe and
overrides; a finished run is skipped and a started one resumes from its newest checkpoint, so running a study again
continues it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError
from slmkit.research.study import LauncherConfig, PlannedRun, Study

log = logging.getLogger("slmkit")

RUN_LOG = "train.log"  # a run started as a process writes its output here, in its run folder


def train_run(recipe: str, overrides: list[str]) -> str:
    """One run, as `slmkit train recipe=... overrides...` does it; returns its folder. Importable, so submitit can
    pickle it."""
    from slmkit.recipe import resolve_recipe
    from slmkit.training.run import train

    return str(train(resolve_recipe(recipe, overrides)).out_dir)


def run_study(study: Study, echo: Any = print) -> list[PlannedRun]:
    """Runs what the study still lacks; returns the runs it ran. A failed run is reported after the others ran."""
    planned = study.runs()
    todo = [run for run in planned if not run.finished]
    echo(f"study {study.config.name}: {len(study.cells)} cells x {len(study.seeds())} seeds = {len(planned)} runs; "
         f"{len(planned) - len(todo)} finished, {sum(r.started for r in todo)} to resume, "
         f"{sum(not r.started for r in todo)} to start")
    launcher = study.config.launcher
    check_launcher(launcher)
    if not todo:
        return []
    if launcher.executor == "submitit":
        failures = _run_submitit(study, todo, launcher, echo)
    else:
        warn_if_busy(echo)
        failures = _run_here(todo, echo) if launcher.parallel == 1 else _run_processes(todo, launcher.parallel, echo)
    if failures:
        raise SlmkitError(f"{len(failures)} of {len(todo)} runs failed: " + "; ".join(failures)
                          + ". Fix the cause and run the study again: finished runs are kept, the others continue")
    return todo


BUSY_LOAD_PER_CORE = 0.5  # a 1-minute load average above this share of the cores: other work is running here


def warn_if_busy(echo: Any) -> None:
    """Says so when other work already runs here: the runs then share its cores, and PyTorch's threads slow down far
    more than in proportion on oversubscribed cores (2-4x measured), so the study's wall times, tokens/s and MFU
    would not be this machine's."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform
        return
    cores = os.cpu_count() or 1
    if load > BUSY_LOAD_PER_CORE * cores:
        echo(f"note: this machine is busy before the study starts (1-minute load {load:.1f} on {cores} cores): its runs "
             f"will share the cores with that work and run slower; results are unaffected, but wall times, tokens/s and "
             f"MFU are not this machine's")


def check_launcher(launcher: LauncherConfig) -> None:
    """A launcher that asks for more parallel runs than cores, or for sbatch parameters submitit does not know, is
    refused before anything runs."""
    cores = os.cpu_count() or 1
    if launcher.executor == "local" and launcher.parallel > cores:
        raise SlmkitError(f"launcher.parallel={launcher.parallel} but this machine has {cores} cores: run at most "
                          f"{cores} at a time")
    if launcher.executor == "submitit":
        _submitit()
        if launcher.cluster == "slurm":
            sbatch_script(launcher.slurm, Path("."))


def _describe(run: PlannedRun) -> str:
    return f"{run.cell} seed {run.seed}"


def _run_here(todo: list[PlannedRun], echo: Any) -> list[str]:
    for i, run in enumerate(todo, 1):
        echo(f"[{i}/{len(todo)}] {_describe(run)}{' (resuming)' if run.started else ''}: {run.out_dir}")
        train_run(run.recipe, run.train_overrides())
    return []


def _run_processes(todo: list[PlannedRun], parallel: int, echo: Any) -> list[str]:
    """`parallel` runs at a time, each a `slmkit train` process with cores // parallel threads."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    waiting, running, failures = list(todo), [], []
    try:
        while waiting or running:
            while waiting and len(running) < parallel:
                run = waiting.pop(0)
                run.out_dir.mkdir(parents=True, exist_ok=True)
                echo(f"[start] {_describe(run)}{' (resuming)' if run.started else ''}: {run.out_dir}")
                log_file = open(run.out_dir / RUN_LOG, "a", encoding="utf-8")
                command = [sys.executable, "-m", "slmkit.cli", "train", f"recipe={run.recipe}", *run.train_overrides(),
                           "trainer.progress_bar=false"]
                running.append((run, subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env), log_file))
            time.sleep(0.2)
            for entry in list(running):
                run, process, log_file = entry
                if process.poll() is None:
                    continue
                running.remove(entry)
                log_file.close()
                if process.returncode == 0:
                    echo(f"[done] {_describe(run)}")
                else:
                    failures.append(f"{_describe(run)} (exit {process.returncode}, see {run.out_dir / RUN_LOG})")
    finally:
        # The study stopped (Ctrl-C, SIGTERM, an error): its runs stop too, each at a step with a checkpoint, so
        # running the study again resumes them.
        for _, process, log_file in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait()
            log_file.close()
    return failures


def _submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise SlmkitError("launcher.executor=submitit needs the package submitit: pip install 'slmkit[research]'") from None
    return submitit


def _run_submitit(study: Study, todo: list[PlannedRun], launcher: LauncherConfig, echo: Any) -> list[str]:
    submitit = _submitit()
    folder = study.folder / ".submitit"
    if launcher.cluster == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=24 * 60)
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**{f"slurm_{key}": value for key, value in launcher.slurm.items()})
    with executor.batch():  # one job array on SLURM
        jobs = [(run, executor.submit(train_run, run.recipe, run.train_overrides())) for run in todo]
    failures = []
    for run, job in jobs:
        echo(f"[submitted] {_describe(run)}: job {job.job_id}")
    for run, job in jobs:
        try:
            job.result()
            echo(f"[done] {_describe(run)}")
        except Exception as err:  # a job's failure comes back as submitit's error holding the job's traceback
            failures.append(f"{_describe(run)} ({str(err).strip().splitlines()[-1]}; logs in {folder})")
    return failures


def sbatch_script(parameters: dict[str, Any], folder: Path) -> str:
    """The sbatch script submitit would submit for these parameters, without a cluster: names and values are checked
    here, so a typo is reported before any job is queued."""
    # submitit checks parameters only inside a SlurmExecutor, which refuses to exist off a cluster; its module-level
    # sbatch writer does the same checks and renders the script.
    from submitit.slurm import slurm

    _submitit()
    valid = set(slurm._get_default_parameters())
    unknown = sorted(set(parameters) - valid)
    if unknown:
        raise SlmkitError(f"launcher.slurm: unknown sbatch parameter {unknown[0]!r}; submitit knows: {', '.join(sorted(valid))}")
    try:
        return slurm._make_sbatch_string(command="slmkit train", folder=str(folder), **parameters)
    except (TypeError, ValueError) as err:
        raise SlmkitError(f"launcher.slurm: {err}") from None


def plan_text(study: Study) -> str:
    """What `study run` would do: every run with its state and command, and the sbatch script for SLURM."""
    check_launcher(study.config.launcher)
    lines = []
    for run in study.runs():
        state = "finished" if run.finished else "resume" if run.started else "start"
        lines.append(f"{state:8} {run.out_dir}: slmkit train recipe={run.recipe} {' '.join(run.train_overrides())}")
    launcher = study.config.launcher
    if launcher.executor == "submitit" and launcher.cluster == "slurm":
        lines += ["", "# the sbatch script of each job (submitit)", sbatch_script(launcher.slurm, study.folder / ".submitit")]
    return "\n".join(lines)
