"""The Ray engine: the local engine's plan, executed on a Ray Data pipeline.

This process (the driver) has already listed the inputs, applied ``--resume``, ``--shard`` and
``--limit`` and loaded the checkpoint's facts (:mod:`pipeline.extract.steps`). Here the images to do
flow through a Ray Dataset: decode + resize as CPU tasks that import no torch
(:class:`~pipeline.extract.engines.ray_decode.DecodeImages`), the detector in a pool of actors
that each load the model once (:class:`~pipeline.extract.engines.ray_stages.DetectRegions`).
Records stream back to the driver, which puts them back in plan order and writes them with the
local engine's sink, so the output is byte-identical to a local run at the same torch thread
count, whatever the number of actors or the order in which they finish.

Faults: Ray Data restarts a dead actor and retries its batches (``max_restarts`` and
``max_task_retries`` of its actor pool); an image that arrives twice is written once. Ray is
imported inside functions only: the extra is optional.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import socket
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from detector import RegionFeatures
from detector.structures import CheckpointInfo
from pipeline.errors import UsageError
from pipeline.extract.boxes_file import BoxesFile
from pipeline.extract.engines.local import RecordSink
from pipeline.extract.engines.ray_decode import DecodeImages
from pipeline.extract.engines.ray_logs import RayLog, progress_logging, ray_output_to
from pipeline.extract.engines.ray_stages import ActorSpec, DetectRegions, NoWeights
from pipeline.extract.engines.ray_weights import (
    ActorWeights,
    WeightsUnavailableError,
    actor_weights,
    nodes_without,
)
from pipeline.extract.plan import ExtractPlan, RunStats
from pipeline.extract.settings import ExtractSettings, RaySettings
from pipeline.features.manifest import Failure, ray_log_path

if TYPE_CHECKING:
    import ray.data

LOG = logging.getLogger("pipeline.extract")

T = TypeVar("T")

#: CPUs a decode task reserves: a fraction, so that decoding always fits beside the actors
#: (with every CPU held by actors a Ray Data task waits forever: bottom-up-attention.pytorch
#: issue #69).
DECODE_CPUS = 0.5
#: CPUs the default actor plan leaves free for decode tasks.
FREE_CPUS = 1.0
#: The smallest default CPU reservation of an actor (a share for the scheduler; the actor
#: still runs ``--threads`` torch threads).
MIN_ACTOR_CPUS = 0.25
#: Actor deaths in a row while loading the model that a run survives.
ACTOR_INIT_DEATHS = 3
#: Images per decode task.
DECODE_ROWS = 4
#: Images per actor call with ``--batch-size auto`` on GPUs (the actor then splits them by
#: its free memory, :func:`detector.model.auto_batch_size`, whose cap this is).
AUTO_ROWS_PER_CALL = 16


@dataclass(frozen=True)
class ActorPlan:
    """How many detector actors, and what each reserves on the cluster."""

    actors: int
    cpus: float
    gpus: int


def plan_actors(
    resources: Mapping[str, float], *, ray: RaySettings, threads: int, on_gpu: bool
) -> ActorPlan:
    """The actor pool for a cluster with ``resources`` (``ray.cluster_resources()``).

    GPU runs get one actor per GPU (``num_gpus=1`` each); CPU runs as many actors as the
    CPUs allow at ``threads`` each, keeping :data:`FREE_CPUS` free for decoding. Unless
    ``--actor-cpus`` says otherwise an actor reserves at most ``threads`` CPUs and never so
    many that no CPU is left for decoding.

    Raises:
        UsageError: ``--device cuda`` on a cluster without GPUs.
    """
    cpus, gpus = float(resources.get("CPU", 0.0)), int(resources.get("GPU", 0.0))
    spare = max(cpus - FREE_CPUS, 0.0)
    if on_gpu and gpus == 0:
        raise UsageError(
            "--device cuda: the Ray cluster has no GPUs (resources: "
            f"{dict(resources)}); add GPU workers or pass --device cpu"
        )
    actors = ray.actors or (gpus if on_gpu else max(1, int(spare // threads)))
    share = ray.actor_cpus or max(MIN_ACTOR_CPUS, min(float(threads), spare / actors))
    return ActorPlan(actors=actors, cpus=share, gpus=1 if on_gpu else 0)


@dataclass(frozen=True)
class RayEngine:
    """A joined Ray cluster and the actor plan of this run (see :func:`ray_engine`)."""

    settings: ExtractSettings
    address: str
    resources: dict[str, float]
    nodes: int
    pool: ActorPlan
    weights: ActorWeights | None = None
    """What the actors load; set by :meth:`prepare`."""
    log: RayLog | None = None
    """Where Ray's own output goes (``OUT.ray.log``), and this command's meanwhile."""

    def describe(self) -> dict[str, Any]:
        """The manifest's ``engine`` section."""
        return {
            "name": "ray",
            "threads": self.settings.threads,
            "address": self.address,
            "actors": self.pool.actors,
            "actor_cpus": self.pool.cpus,
            "actor_gpus": self.pool.gpus,
            "decode_cpus": DECODE_CPUS,
            "ship_weights": self.weights is not None and self.weights.shipped is not None,
            "cluster": {"nodes": self.nodes, "resources": self.resources},
            "log": None if self.log is None else str(self.log.path),
        }

    def prepare(self, checkpoint: CheckpointInfo) -> RayEngine:
        """This engine, ready to run the driver's ``checkpoint``: on a joined cluster its
        file is put into the object store for nodes without it, or with
        ``--no-ship-weights`` every node that can hold an actor is checked for it. (A Ray
        instance started here runs its actors on this machine, with this environment:
        nothing to ship or check.)

        Raises:
            UsageError: ``--no-ship-weights`` and some node that can hold an actor lacks
                the file (nothing written).
        """
        flags = self.settings.ray
        assert flags is not None  # ray_engine() refuses settings without them
        joined = flags.address is not None
        ship = joined and flags.ship_weights
        weights = actor_weights(self.settings.detector, checkpoint, ship=ship)
        lacking = []
        if joined and not ship:
            lacking = nodes_without(weights, cpus=self.pool.cpus, gpus=self.pool.gpus)
        if lacking:
            raise UsageError(
                "--no-ship-weights: the detector's weights (sha256 "
                f"{weights.sha256}) are not on every node of the cluster:\n  "
                + "\n  ".join(lacking)
                + "\nPut the checkpoint on every node (the registry's cache or "
                "$LXMERT_PIPELINE_WEIGHTS), or drop --no-ship-weights to send this machine's copy"
            )
        return dataclasses.replace(self, weights=weights)

    def run(
        self,
        plan: ExtractPlan,
        *,
        sink: RecordSink,
        batch_size: int,
        stats: RunStats,
        show_progress: bool,
        boxes: BoxesFile | None,
    ) -> None:
        """Detect ``plan.todo`` on the cluster and write each outcome in plan order.
        ``batch_size`` (this process's) is unused: each actor chooses its own.

        Raises:
            WeightsUnavailableError: an actor's node has no copy of the weights (one that
                joined after :meth:`prepare` checked, or where the shipped copy could not
                be kept); what was written stays valid.
        """
        del batch_size
        if self.weights is None and plan.todo:
            raise ValueError("RayEngine.run before prepare(): the actors' weights are not set")
        terminal = None if self.log is None else self.log.terminal
        progress = tqdm(
            total=len(plan.todo),
            unit="img",
            disable=not show_progress,
            dynamic_ncols=True,
            file=terminal,
        )
        start = time.monotonic()
        try:
            if plan.todo:
                redirect = (
                    logging_redirect_tqdm(loggers=[logging.getLogger("pipeline")])
                    if terminal is None
                    else progress_logging(terminal)
                )
                with redirect:
                    self._stream(plan, sink=sink, stats=stats, progress=progress, boxes=boxes)
        finally:
            progress.close()
            stats.seconds["loop"] = time.monotonic() - start

    def _stream(
        self,
        plan: ExtractPlan,
        *,
        sink: RecordSink,
        stats: RunStats,
        progress: tqdm,
        boxes: BoxesFile | None,
    ) -> None:
        order = InOrder[RegionFeatures | Failure](count=len(plan.todo))
        assert self.weights is not None  # checked by run()
        rows = iter(self.dataset(plan, boxes, self.weights).iter_rows())
        try:
            while True:
                tick = time.monotonic()
                row = next(rows, None)
                stats.seconds["waiting"] += time.monotonic() - tick
                if row is None:
                    break
                if isinstance(row["outcome"], NoWeights):
                    raise WeightsUnavailableError(
                        f"{row['outcome'].reason} (the records written stay valid: "
                        "--resume continues)"
                    )
                stats.seconds["detector"] += float(row["seconds"])
                LOG.debug("image %d of the plan came back", int(row["index"]))
                tick = time.monotonic()
                for outcome in order.add(int(row["index"]), row["outcome"]):
                    _put(outcome, sink=sink, stats=stats, boxes=boxes)
                    progress.update(1)
                stats.seconds["writing"] += time.monotonic() - tick
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # stops the dataset's execution (Ctrl-C, an error)
        order.check_complete()

    def dataset(
        self, plan: ExtractPlan, boxes: BoxesFile | None, weights: ActorWeights
    ) -> ray.data.Dataset:
        """The run's pipeline: rows of ``plan.todo`` -> decode tasks -> detector actors."""
        import ray.data

        settings = self.settings
        # Workers do not share this process's working directory: they read absolute paths,
        # and messages name each file as it was listed.
        rows = [
            {
                "index": index,
                "image_id": item.image_id,
                "path": str(item.path),
                "file": str(item.path.absolute()),
            }
            for index, item in enumerate(plan.todo)
        ]
        # A block is one actor call's worth of work: at least one per actor, when there are
        # images enough, or the actors beyond the block count would sit idle.
        blocks = min(len(rows), max(math.ceil(len(rows) / DECODE_ROWS), self.pool.actors))
        decode = DecodeImages(
            config=settings.config,
            max_pixels=settings.max_pixels,
            max_bytes=settings.max_bytes,
            boxes=boxes,
        )
        detect = ActorSpec(
            weights=weights,
            config=settings.config,
            options=settings.inference_options.on(settings.device.type),
            threads=settings.threads,
            batch_size=settings.batch_size,
            boxes=boxes,
        )
        on_gpu = self.pool.gpus > 0
        with warnings.catch_warnings():
            # Ray 2.60 calls ``max_retries`` a deprecated remote argument but names no
            # parameter that replaces it here (requirements-ray.txt pins 2.60).
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            decoded = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
                decode,
                batch_size=DECODE_ROWS,
                num_cpus=DECODE_CPUS,
                # Retried when their worker is lost (Ray Data's default, said here): remote
                # arguments unlike the actors' also keep Ray Data from fusing decoding into
                # the actors, which it does to stages of equal resources (2 actors at 0.5
                # CPU), and then the actors would decode instead of detecting.
                max_retries=-1,
                batch_format="numpy",
            )
        return decoded.map_batches(
            DetectRegions,
            fn_constructor_kwargs={"spec": detect},
            compute=ray.data.ActorPoolStrategy(size=self.pool.actors),
            batch_size=settings.batch_size or (AUTO_ROWS_PER_CALL if on_gpu else 1),
            num_cpus=self.pool.cpus,
            num_gpus=self.pool.gpus,
            batch_format="numpy",
        )


def _put(
    outcome: RegionFeatures | Failure,
    *,
    sink: RecordSink,
    stats: RunStats,
    boxes: BoxesFile | None,
) -> None:
    if isinstance(outcome, Failure):
        LOG.warning("failed: %s: %s", outcome.path, outcome.reason)
        stats.failures.append(outcome)
        return
    sink.put(outcome)
    stats.add_record(outcome, boxes)


class InOrder(Generic[T]):
    """Outcomes put back in plan order: each arrives once or more (a retried batch), in any
    order; each is released once, when all before it have been."""

    def __init__(self, *, count: int) -> None:
        self.count = count
        self.next = 0
        self.waiting: dict[int, T] = {}

    def add(self, index: int, outcome: T) -> list[T]:
        """Take the outcome of image ``index``; returns those now ready, in order."""
        if index >= self.next and index not in self.waiting:
            self.waiting[index] = outcome
        ready = []
        while self.next in self.waiting:
            ready.append(self.waiting.pop(self.next))
            self.next += 1
        return ready

    def check_complete(self) -> None:
        """Raises RuntimeError if some image never came back (a Ray fault, never expected)."""
        if self.next != self.count:
            raise RuntimeError(
                f"the Ray pipeline ended after {self.next} of {self.count} images in order "
                f"({len(self.waiting)} later ones held back); run again with --resume"
            )


@contextlib.contextmanager
def ray_engine(settings: ExtractSettings) -> Iterator[RayEngine]:
    """Join the cluster at ``--ray-address`` (or start Ray on this machine) for one run, and
    leave it (shut it down if started here) on exit. Meanwhile Ray's own output goes to
    ``OUT.ray.log`` beside the manifest, not to the terminal
    (:mod:`pipeline.extract.engines.ray_logs`).
    """
    import ray

    if settings.ray is None:
        raise ValueError("ray_engine needs settings.engine == 'ray' (settings.ray is None)")
    _quiet_ray()
    address = settings.ray.address
    if address is not None:
        _check_reachable(address)
    with ray_output_to(ray_log_path(settings.output), joined=address is not None) as log:
        start = time.monotonic()
        _connect(address)
        try:
            yield _joined(settings, log, start=start)
        finally:
            ray.shutdown()


def _joined(settings: ExtractSettings, log: RayLog, *, start: float) -> RayEngine:
    """The engine on the cluster this process has just joined (``ray.init`` done)."""
    import ray

    assert settings.ray is not None  # ray_engine() refuses settings without them
    resources = {key: float(value) for key, value in ray.cluster_resources().items()}
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    pool = plan_actors(
        resources,
        ray=settings.ray,
        threads=settings.threads,
        on_gpu=settings.device.type == "cuda",
    )
    address = str(ray.get_runtime_context().gcs_address)
    LOG.info(
        "Ray cluster %s: %d node(s), %g CPU, %g GPU; %d actor(s) at %g CPU, %d GPU (%.1f s); "
        "Ray's own log: %s",
        address,
        nodes,
        resources.get("CPU", 0.0),
        resources.get("GPU", 0.0),
        pool.actors,
        pool.cpus,
        pool.gpus,
        time.monotonic() - start,
        log.path,
    )
    _configure_data()
    return RayEngine(
        settings=settings,
        address=address,
        resources=resources,
        nodes=nodes,
        pool=pool,
        log=log,
    )


#: Why joining a cluster fails most often, and the remedy.
NOT_JOINED = (
    "--ray-address {address}: could not join the Ray cluster there ({error}). Check that "
    "`ray start --head` runs at that address (`ray status --address {address}`). A cluster "
    "started where ~/.ray/auth_token exists uses token authentication, which Ray sends to an "
    "explicit address only when asked: set RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN, or the "
    "cluster's token in ~/.ray/auth_token) for this command"
)


def _connect(address: str | None) -> None:
    """``ray.init`` for the run: join ``address``, or start a new instance here (``local``:
    never a cluster some earlier ``ray start`` left recorded in /tmp/ray, which is Ray's
    choice when the address is None).

    Raises:
        UsageError: the cluster at ``address`` cannot be joined (nothing was done).
    """
    import ray

    try:
        ray.init(
            address=address or "local",
            # The workers' output comes to this process, and with the rest of Ray's to the
            # log file (ray_output_to), never through the progress bar; failures are data.
            log_to_driver=True,
            logging_level=logging.INFO,
            include_dashboard=False if address is None else None,
        )
    except (ConnectionError, ray.exceptions.AuthenticationError) as error:
        if address is None:
            raise
        raise UsageError(NOT_JOINED.format(address=address, error=error)) from error


#: Seconds to wait for a TCP connection to a cluster's HOST:PORT before calling it unreachable.
REACH_SECONDS = 10.0


def _check_reachable(address: str) -> None:
    """A ``HOST:PORT`` address nobody listens at fails here at once (``ray.init`` would retry
    it for minutes). ``auto`` and ``ray://`` addresses are left to Ray.

    Raises:
        UsageError: nothing accepts a connection at ``address``.
    """
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_SECONDS):
            pass
    except OSError as error:
        raise UsageError(NOT_JOINED.format(address=address, error=error)) from error


def _configure_data() -> None:
    """This process's Ray Data settings for the run's dataset."""
    import ray.data

    data = ray.data.DataContext.get_current()
    data.enable_progress_bars = False  # ours (tqdm over images written) is the one shown
    data.print_on_execution_start = False
    # Outputs in plan order: the driver writes in that order, and would otherwise hold every
    # record that overtook a slow one in memory.
    data.execution_options.preserve_order = True
    # A node lost while an actor loads the model is survived; weights that cannot be loaded
    # anywhere still end the run after this many tries.
    data.max_consecutive_actor_init_deaths = ACTOR_INIT_DEATHS


def _quiet_ray() -> None:
    """Ray's own logs (cluster start, dataset plans, the note that its progress bars are off)
    go, from INFO up, to the run's Ray log file (:func:`ray_engine`), not to the terminal."""
    logging.getLogger("ray").setLevel(logging.INFO)
    logging.getLogger("ray.data").setLevel(logging.INFO)
