"""`data.engine=datatrove`: slmkit's stages as datatrove pipeline steps, on a local, SLURM or Ray executor.

The stages, each one datatrove executor whose tasks pick their share by rank (see `keyed` for the work itself):
count boilerplate (when on) -> curate (read, clean, filter, MinHash signatures) -> buckets -> cluster (one task) ->
finish (drop duplicates, PII, decontaminate, split) -> corpus + tokenizer (one task) -> tokenize -> publish (one task:
shards, report, manifest last). The MinHash stages are datatrove's four (signatures, buckets, clustering, filtering),
keyed by document position instead of rank. Every task first checks the corpus against the run's input fingerprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import time
from abc import abstractmethod
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from data_prep.chunks import read_json, write_json
from data_prep.curate import deduplicates
from data_prep.engines import keyed
from data_prep.engines.heartbeat import Heartbeat, NodeWatch
from data_prep.plan import Plan
from data_prep.workers import WatchedPool, WorkerEnd
from slmkit.data import PreparedData
from slmkit.data_config import DataConfig, TokenizerConfig
from slmkit.errors import SlmkitError

EXTRA = "pip install 'slmkit[distributed]'"
RAY_EXTRA = "pip install 'slmkit[distributed]' 'ray>=2.9'"
POLL_SECONDS = 0.5  # how often a node checks on the other nodes' share of a stage


def require_datatrove() -> None:
    try:
        import datatrove  # noqa: F401
    except ImportError:
        raise SlmkitError(f"data.engine=datatrove needs the datatrove extra, which is not installed: {EXTRA}") from None


require_datatrove()

from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.base import PipelineStep  # noqa: E402


@dataclass(frozen=True)
class RunSpec:
    """What every task needs to find the run: the recipe's sections, the output folder and the inputs' hash."""

    data: DataConfig
    tokenizer: TokenizerConfig
    folder: str
    inputs_sha256: str

    def layout(self) -> keyed.Layout:
        """The run's layout, after checking that the corpus is still the one the run started on."""
        from data_prep.prepare import make_plan

        plan = make_plan(self.data, self.tokenizer, Path(self.folder))
        if plan.inputs_sha256 != self.inputs_sha256:
            raise SlmkitError(
                "the corpus changed while the run was on (its input fingerprint, the files' sizes and modification "
                f"times, is {plan.inputs_sha256[:16]} now and was {self.inputs_sha256[:16]} when the run started): "
                "the tasks would mix two corpora, so nothing is published. Leave the sources alone during a run and "
                "start it again")
        return keyed.Layout(plan, self.data)


class SlmkitStep(PipelineStep):
    """One slmkit stage as a datatrove step: it consumes no documents and yields none; its outputs are files."""

    type = "slmkit"

    def __init__(self, spec: RunSpec):
        super().__init__()
        self.spec = spec

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1):
        with self.track_time(unit="task"):
            self.work(self.spec.layout(), rank, world_size)
        yield from ()

    @abstractmethod
    def work(self, layout: keyed.Layout, rank: int, world_size: int) -> None:
        """This task's share of the stage (see `keyed`)."""


class CountBoilerplate(SlmkitStep):
    name = "count boilerplate"

    def work(self, layout, rank, world_size):
        for unit in keyed.owned(len(layout.units()), rank, world_size):
            keyed.count_unit(layout, unit)


class Curate(SlmkitStep):
    name = "read + clean + filter + signatures"

    def work(self, layout, rank, world_size):
        boilerplate, _ = keyed.boilerplate_of(layout)
        for unit in keyed.owned(len(layout.units()), rank, world_size):
            keyed.curate_unit(layout, unit, boilerplate)


class Buckets(SlmkitStep):
    name = "minhash buckets"

    def work(self, layout, rank, world_size):
        keyed.bucket_task(layout, rank, world_size)


class Cluster(SlmkitStep):
    name = "minhash clustering"

    def work(self, layout, rank, world_size):
        keyed.cluster(layout, keyed.bucket_task_count(layout.data))


class Finish(SlmkitStep):
    name = "drop duplicates + pii + decontaminate + split"

    def work(self, layout, rank, world_size):
        pieces = layout.pieces()
        for index in keyed.owned(len(pieces), rank, world_size):
            keyed.finish_piece(layout, index, *pieces[index])


class Corpus(SlmkitStep):
    name = "corpus + tokenizer"

    def work(self, layout, rank, world_size):
        from data_prep.prepare import ensure_tokenizer

        _, report = keyed.boilerplate_of(layout)
        corpus = keyed.build_keyed_corpus(layout, report, self.spec.data.tasks)
        start = time.perf_counter()
        _, tokenizer_report = ensure_tokenizer(layout.plan, layout.data, self.spec.tokenizer, corpus)
        write_json(layout.root / "tokenizer.json", {"report": tokenizer_report, "seconds": time.perf_counter() - start})


class Tokenize(SlmkitStep):
    name = "tokenize"

    def work(self, layout, rank, world_size):
        corpus, spec = corpus_and_spec(layout)
        for index in keyed.owned(len(corpus["parts"]), rank, world_size):
            keyed.tokenize_index(spec, corpus, Path(layout.plan.folder), index)


class Publish(SlmkitStep):
    name = "pack + report + manifest"

    def work(self, layout, rank, world_size):
        from data_prep.prepare import TOKENIZER_FILE, publish

        corpus, spec = corpus_and_spec(layout)
        tokenizer = read_json(layout.root / "tokenizer.json")
        publish(layout.plan, layout.data, corpus, Path(layout.plan.folder) / TOKENIZER_FILE, tokenizer["report"], spec,
                keyed.tokenized(spec, corpus), {"tokenizer": tokenizer["seconds"]}, time.perf_counter())


def corpus_and_spec(layout: keyed.Layout) -> tuple[dict[str, Any], Any]:
    from data_prep.curate import CORPUS_DIR, CORPUS_DONE
    from data_prep.prepare import TOKENIZER_FILE, token_spec

    folder = Path(layout.plan.folder)
    return read_json(folder / CORPUS_DIR / CORPUS_DONE), token_spec(layout.plan, folder / TOKENIZER_FILE)


@dataclass(frozen=True)
class Stage:
    name: str
    step: type
    tasks: int


def stages(data: DataConfig) -> list[Stage]:
    """The run's stages in order, with their task counts (checked here, before anything runs)."""
    parallel = data.tasks
    plan = []
    if data.clean.enabled and data.clean.boilerplate:
        plan.append(Stage("count", CountBoilerplate, parallel))
    plan.append(Stage("curate", Curate, parallel))
    if deduplicates(data):
        plan += [Stage("buckets", Buckets, keyed.bucket_task_count(data)), Stage("cluster", Cluster, 1),
                 Stage("finish", Finish, parallel)]
    plan += [Stage("corpus", Corpus, 1), Stage("tokenize", Tokenize, parallel), Stage("publish", Publish, 1)]
    return plan


def check(data: DataConfig) -> None:
    if data.node_rank >= data.nodes:
        raise SlmkitError(f"data.node_rank={data.node_rank} is not one of the {data.nodes} nodes (data.nodes): "
                          f"number them 0 to {data.nodes - 1}")
    if data.nodes > 1 and data.executor != "local":
        raise SlmkitError(f"data.nodes={data.nodes} shares a local-executor run between machines; with "
                          f"data.executor={data.executor} the scheduler places the tasks: leave data.nodes at 1")
    if data.executor == "slurm" and not data.slurm.partition:
        raise SlmkitError("data.executor=slurm needs data.slurm.partition: the partition the tasks run on")


def logging_dir(layout: keyed.Layout, stage: Stage) -> str:
    return str(layout.root / "datatrove" / stage.name)


def node_share(tasks: int, nodes: int, node_rank: int) -> tuple[int, int]:
    """(first rank, rank count) of this node's contiguous share of a stage: datatrove's local_rank_offset/local_tasks."""
    first, end = node_rank * tasks // nodes, (node_rank + 1) * tasks // nodes
    return first, end - first


def share_owner(rank: int, tasks: int, nodes: int) -> int:
    """The node whose share of a stage's tasks holds task `rank` (node_share's inverse)."""
    return next(node for node in range(nodes) if rank < sum(node_share(tasks, nodes, node)))


# ---- the local executor ---------------------------------------------------------------------------------------

def local_executor(spec: RunSpec, layout: keyed.Layout, stage: Stage, first: int, count: int) -> LocalPipelineExecutor:
    return LocalPipelineExecutor([stage.step(spec)], tasks=stage.tasks, workers=1, logging_dir=logging_dir(layout, stage),
                                 local_tasks=count, local_rank_offset=first)


def run_local_ranks(spec: RunSpec, stage: Stage, first: int, count: int) -> None:
    """Runs ranks [first, first + count) of a stage in this process; datatrove's task logs go to its logging folder."""
    layout = spec.layout()
    executor = local_executor(spec, layout, stage, first, count)
    with contextlib.redirect_stderr(io.StringIO()):  # datatrove logs each task to stderr; the files keep it all
        try:
            executor.run()
        except SlmkitError:
            raise
        except Exception as error:
            raise SlmkitError(f"datatrove stage {stage.name!r} failed: {type(error).__name__}: {error} (task logs: "
                              f"{logging_dir(layout, stage)}/logs); fix the cause and run again: finished tasks are kept"
                              ) from None


def run_stage_here(spec: RunSpec, layout: keyed.Layout, stage: Stage, pool: WatchedPool | None) -> None:
    """This node's share of a stage: on the pool's processes, one task each (so a killed one is noticed), or here."""
    first, count = node_share(stage.tasks, spec.data.nodes, spec.data.node_rank)
    executor = local_executor(spec, layout, stage, first, count)
    ranks = executor.get_incomplete_ranks(range(first, first + count))
    if not ranks:
        return
    if pool is None or len(ranks) == 1:
        run_local_ranks(spec, stage, first, count)
        return
    try:
        pool.wait([pool.submit(run_local_ranks, spec, stage, rank, 1) for rank in ranks])
    except BrokenProcessPool:
        raise SlmkitError(task_process_died(spec, stage, pool.how_a_worker_went())) from None


def task_process_died(spec: RunSpec, stage: Stage, end: WorkerEnd) -> str:
    memory = f" (lower data.workers, {spec.data.workers}, if memory is short)" if end.killed else ""
    return (f"a datatrove task process of stage {stage.name!r} {end}; nothing is published. Run again: finished tasks "
            f"are kept and only the rest run{memory}")


def wait_for_stage(spec: RunSpec, layout: keyed.Layout, stage: Stage, published: Callable[[], bool],
                   watch: NodeWatch | None) -> None:
    """Waits until every task of a stage is complete, on whichever node it ran (or the run is published); stops
    once a node that owes tasks shows no sign of life."""
    executor = LocalPipelineExecutor([], tasks=stage.tasks, logging_dir=logging_dir(layout, stage))
    while incomplete := executor.get_incomplete_ranks(range(stage.tasks)):
        if published():
            return
        if watch is not None:
            owing = {share_owner(rank, stage.tasks, spec.data.nodes) for rank in incomplete} - {spec.data.node_rank}
            watch.check(sorted(owing), f"tasks {incomplete} of stage {stage.name!r}")
        time.sleep(POLL_SECONDS)


def node_watch(layout: keyed.Layout, data: DataConfig) -> tuple[contextlib.AbstractContextManager[Any], NodeWatch | None]:
    """This node's heartbeat and its watch over the other nodes of a shared run; nothing for a run on one node."""
    if data.nodes == 1:
        return contextlib.nullcontext(), None
    folder = layout.root / "datatrove" / "nodes"
    return Heartbeat(folder, data.node_rank), NodeWatch(folder, data.nodes, data.node_timeout_minutes)


def run_local(spec: RunSpec, layout: keyed.Layout, progress: bool, watch: NodeWatch | None) -> None:
    data = spec.data
    workers = data.workers or os.cpu_count() or 1
    from data_prep.prepare import make_plan, reusable_manifest

    def published() -> bool:
        return reusable_manifest(make_plan(data, spec.tokenizer, Path(spec.folder))) is not None

    # one set of worker processes for every stage: starting one costs seconds of imports
    pool = WatchedPool(workers) if workers > 1 else None
    finished = False
    try:
        for stage in stages(data):
            if progress:
                print(f"datatrove: {stage.name} ({stage.tasks} task{'s' * (stage.tasks > 1)})", file=sys.stderr, flush=True)
            run_stage_here(spec, layout, stage, pool)
            wait_for_stage(spec, layout, stage, published, watch)
        finished = True
    finally:
        if pool is not None:
            # a failed or interrupted run waits for no task nobody will read: a killed task leaves no completion
            # mark, so a rerun runs it again
            pool.close(kill=not finished)


# ---- SLURM and Ray ---------------------------------------------------------------------------------------------

def slurm_executors(spec: RunSpec, layout: keyed.Layout) -> list[Any]:
    """One job array per stage, each depending on the one before; built, not submitted (`.run()` submits)."""
    from datatrove.executor import SlurmPipelineExecutor

    slurm, executors = spec.data.slurm, []
    for stage in stages(spec.data):
        executors.append(SlurmPipelineExecutor(
            [stage.step(spec)], tasks=stage.tasks, time=slurm.time, partition=slurm.partition,
            cpus_per_task=slurm.cpus_per_task, mem_per_cpu_gb=slurm.mem_per_cpu_gb, job_name=f"slmkit-{stage.name}",
            logging_dir=logging_dir(layout, stage), depends=executors[-1] if executors else None,
            venv_path=slurm.venv_path or None, max_array_size=slurm.max_array_size,
            workers=spec.data.workers or -1))
    return executors


def run_on_ray(spec: RunSpec, layout: keyed.Layout, progress: bool) -> None:
    """Each stage on the Ray cluster this process is connected to (`ray.init` first, or one is started here)."""
    try:
        import ray  # noqa: F401
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError:
        raise SlmkitError(f"data.executor=ray needs Ray, which is not installed: {RAY_EXTRA}") from None
    for stage in stages(spec.data):
        if progress:
            print(f"datatrove on ray: {stage.name} ({stage.tasks} task{'s' * (stage.tasks > 1)})", file=sys.stderr, flush=True)
        executor = RayPipelineExecutor([stage.step(spec)], tasks=stage.tasks, workers=spec.data.workers or -1,
                                       logging_dir=logging_dir(layout, stage))
        with contextlib.redirect_stderr(io.StringIO()):
            executor.run()
        failed = executor.get_incomplete_ranks(range(stage.tasks))
        if failed:
            raise SlmkitError(f"datatrove stage {stage.name!r} did not finish tasks {failed} on Ray (task logs: "
                              f"{logging_dir(layout, stage)}/logs); fix the cause and run again: finished tasks are kept")


# ---- the entry point -------------------------------------------------------------------------------------------

def start(plan: Plan, data: DataConfig, tokenizer: TokenizerConfig) -> tuple[RunSpec, keyed.Layout]:
    """Checks the settings and task counts before anything runs; node 0 clears old outputs and lists the inputs."""
    from data_prep.prepare import clear_outputs

    check(data)
    stages(data)
    spec = RunSpec(data, tokenizer, str(plan.folder), plan.inputs_sha256)
    Path(plan.folder).mkdir(parents=True, exist_ok=True)
    layout = keyed.Layout(plan, data)
    if data.node_rank == 0:
        clear_outputs(Path(plan.folder))
        if not (layout.root / keyed.UNITS).is_file():
            layout.write_units()
    return spec, layout


def submit_to_slurm(plan: Plan, data: DataConfig, tokenizer: TokenizerConfig) -> str:
    """`slmkit data prepare` with data.executor=slurm: submits one job array per stage, each after the one before."""
    spec, layout = start(plan, data, tokenizer)
    executors = slurm_executors(spec, layout)
    executors[-1].run()  # submits its dependencies first
    return (f"submitted {len(executors)} SLURM job arrays (logs under {layout.root / 'datatrove'}); the token shards "
            f"appear at {plan.folder} when the last one finishes, and `slmkit data prepare` then reports them")


def prepare_on_datatrove(plan: Plan, data: DataConfig, tokenizer: TokenizerConfig, progress: bool) -> PreparedData:
    """Runs the stages on the local or Ray executor and returns the published shards."""
    from data_prep.prepare import remove_work, reusable_manifest, reused

    if data.executor == "slurm":
        check(data)
        raise SlmkitError(
            f"the token shards at {plan.folder} are not prepared yet, and data.executor=slurm prepares them as SLURM "
            f"jobs: submit them with `slmkit data prepare` (same recipe), and run this again once they have finished")
    spec, layout = start(plan, data, tokenizer)
    if data.executor == "ray":
        run_on_ray(spec, layout, progress)
    else:
        heartbeat, watch = node_watch(layout, data)
        with heartbeat:
            wait_for_units(layout, watch)
            run_local(spec, layout, progress, watch)
    manifest = reusable_manifest(plan)
    if manifest is None:
        raise SlmkitError(f"the datatrove run finished without publishing {plan.folder}; see the task logs under "
                          f"{layout.root / 'datatrove'}")
    if data.node_rank == 0:
        remove_work(plan)
    return dataclasses.replace(reused(plan, manifest), reused=False)


def wait_for_units(layout: keyed.Layout, watch: NodeWatch | None) -> None:
    while not (layout.root / keyed.UNITS).is_file():  # node 0 lists the inputs
        if watch is not None:
            watch.check([0], "node 0 to list the run's inputs")
        time.sleep(POLL_SECONDS)
