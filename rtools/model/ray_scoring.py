"""rt-score on Ray Data: windows of records scored by a pool of actors, each holding a Scorer.

The driver reads the input with the library's reader (so stdin works and a record that is not JSON
is the same ``file:line`` error as with the local engine), cuts it into windows of ``window``
records, and makes a Ray dataset with one row per window: its index and the pickled
``(name, [(line, record), ...])``. ``map_batches`` hands each window whole to an actor (one per GPU
with ``num_gpus=1``, or one per share of the CPUs) that runs :meth:`Scorer.score_windows` on it:
the very code of the local engine, on the same windows, so the records, their batches and hence the
bytes written are the same. An actor returns the scored records and, for a bad record, its error;
the driver writes the windows in input order (by their index) and raises the first error after
every record before it, as the local engine does.

The driver holds the input (pickled) until it is scored: unlike the local engine, a file larger than
the driver's memory does not work.

    scorer = RayScorer.load("runs/adapter", ScoreConfig(window=256), workers=2)
    try:
        for window in scorer.score_windows(read_records("in.jsonl"), "in.jsonl"):
            ...
    finally:
        scorer.close()
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import time
from collections.abc import Iterable, Iterator
from typing import Any

from ..records import RecordError
from .engines import EngineError, require_module
from .loading import ModelError
from .scoring import ScoreConfig, Scorer, StaleFields

#: How often a dead actor is restarted (and its window retried) before the run fails.
MAX_RESTARTS = 3


def restart_limits() -> dict[str, int]:
    """The actors' creation options that bound their restarts and retries (:data:`MAX_RESTARTS`)."""
    return {"max_restarts": MAX_RESTARTS, "max_task_retries": MAX_RESTARTS}


#: CPUs per actor when the number of workers is not given on a cluster without GPUs.
CPUS_PER_WORKER = 4


class ScoreActor:
    """A Ray Data actor: loads the scorer once, then scores whole windows (one per row).

    A model that cannot be loaded is not an actor failure: every window answers with the ModelError's
    message, which the driver raises as a ModelError."""

    def __init__(self, model: str | None, config: ScoreConfig):
        start = time.perf_counter()
        self.scorer: Scorer | None = None
        self.model_error: str | None = None
        try:
            self.scorer = Scorer.load(model, config, quiet=True)
        except ModelError as e:
            self.model_error = str(e)
        self.load_s = time.perf_counter() - start

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        out: dict[str, list[Any]] = {k: [] for k in ("window", "data", "load_s", "unpickle_s", "score_s")}
        for index, data in zip(
            batch.column("window").to_pylist(), batch.column("data").to_pylist(), strict=True
        ):
            t0 = time.perf_counter()
            name, pairs = pickle.loads(data)
            t1 = time.perf_counter()
            result = self.score(name, pairs)
            t2 = time.perf_counter()
            out["window"].append(index)
            out["data"].append(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
            out["load_s"].append(self.load_s)
            # pickling the result is counted with unpickling its input: the serialisation inside the actor
            out["unpickle_s"].append(t1 - t0 + time.perf_counter() - t2)
            out["score_s"].append(t2 - t1)
            self.load_s = 0.0  # reported once per actor
        return pa.table(out)

    def score(self, name: str, pairs: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        result: dict[str, Any] = {"records": [], "error": None, "model_error": self.model_error}
        if self.scorer is None:
            return result
        try:
            for win in self.scorer.score_windows(pairs, name):
                result["records"].extend(win)
        except RecordError as e:
            result["error"] = (e.message, e.path, e.line, e.hint)
        result["truncated"] = self.scorer.truncated
        result["stale"] = self.scorer.stale
        result["limit"] = self.scorer.limit
        result["pid"] = os.getpid()
        return result


class RayScorer:
    """Scores records on a Ray cluster (see the module's note); the same interface as Scorer's
    :meth:`~rtools.model.scoring.Scorer.score_windows`, ``truncated`` and ``prompt_limit``.

    ``address``: an existing cluster to join (None starts a local one; a Ray already initialised in
    this process is used as it is); ``workers``: the number of actors (default: one per GPU, else one
    per ``CPUS_PER_WORKER`` CPUs). ``stats`` says where the time of the last run went."""

    def __init__(
        self,
        model: str | None,
        config: ScoreConfig,
        quiet: bool = True,
        address: str | None = None,
        workers: int | None = None,
    ):
        if workers is not None and not (isinstance(workers, int) and workers >= 1):
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.ray = require_module("ray", "ray", "ray")
        require_module("ray.data", "ray", "ray")
        self.model = model
        self.config = config
        self.quiet = quiet
        self.window = config.window
        self.truncated = 0
        self.stale: StaleFields | None = None
        self.limit: tuple[int, str] | None = None
        self.stats: dict[str, float] = {}
        start = time.perf_counter()
        self._started = False
        if not self.ray.is_initialized():
            try:
                self.ray.init(
                    address=address or "local",
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            except (ConnectionError, RuntimeError, ValueError) as e:
                where = f"the Ray cluster at {address}" if address else "a local Ray"
                raise EngineError(f"cannot start {where}: {e}") from None
            self._started = True
        self.stats["ray_init_s"] = time.perf_counter() - start
        self.workers, self.resources, self.actor_config = self._plan(workers)

    @classmethod
    def load(
        cls,
        model: str | None = None,
        config: ScoreConfig | None = None,
        quiet: bool = True,
        address: str | None = None,
        workers: int | None = None,
    ) -> RayScorer:
        return cls(model, config or ScoreConfig(), quiet, address=address, workers=workers)

    def _plan(self, workers: int | None) -> tuple[int, dict[str, float], ScoreConfig]:
        """How many actors, the resources of each, and the configuration they load with."""
        resources = self.ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        device = self.config.device
        on_gpu = device not in ("cpu",) and (gpus > 0 or (device or "").startswith("cuda"))
        if on_gpu:
            if gpus == 0:
                raise EngineError(f"the Ray cluster has no GPUs for device {device}", fields=("device",))
            n = workers or gpus
            if n > gpus:
                raise EngineError(f"{n} Ray workers need a GPU each; the cluster has {gpus}")
            return n, {"num_gpus": 1}, dataclasses.replace(self.config, device=device or "cuda")
        if cpus == 0:
            raise EngineError("the Ray cluster has no CPUs")
        n = workers or max(1, cpus // CPUS_PER_WORKER)
        if n > cpus:
            raise EngineError(f"{n} Ray workers need a CPU each; the cluster has {cpus}")
        return n, {"num_cpus": max(1, cpus // n)}, dataclasses.replace(self.config, device="cpu")

    @property
    def prompt_limit(self) -> int | None:
        return self.limit[0] if self.limit else None

    def close(self) -> None:
        """Shut down the Ray this scorer started (a Ray it joined or found running is left alone)."""
        if self._started:
            self.ray.shutdown()
            self._started = False

    def _payloads(self, records: Iterable[Any], name: str | None) -> tuple[list[bytes], RecordError | None]:
        """The input as pickled windows, and the reader's error (kept for after the records before it)."""
        payloads: list[bytes] = []
        buf: list[tuple[int, Any]] = []
        error = None
        try:
            for ordinal, item in enumerate(records):
                buf.append(item if isinstance(item, tuple) else (ordinal + 1, item))
                if len(buf) >= self.window:
                    payloads.append(pickle.dumps((name, buf), protocol=pickle.HIGHEST_PROTOCOL))
                    buf = []
        except RecordError as e:
            error = e
        if buf or not payloads:  # an empty input still loads the model: its errors are reported
            payloads.append(pickle.dumps((name, buf), protocol=pickle.HIGHEST_PROTOCOL))
        return payloads, error

    def score_windows(
        self, records: Iterable[Any], name: str | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """:meth:`Scorer.score_windows` on the cluster: windows of scored records in input order."""
        ray = self.ray
        stats = self.stats
        for k in ("read_s", "driver_serial_s", "actor_serial_s", "score_s", "load_s", "wall_s"):
            stats[k] = 0.0
        start = time.perf_counter()
        payloads, reader_error = self._payloads(records, name)
        stats["read_s"] = time.perf_counter() - start  # reading, parsing and pickling the input
        stats["windows"] = len(payloads)
        stats["workers"] = self.workers
        self.truncated = 0
        self.stale = None
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # rt-score reports its own progress
        context.print_on_execution_start = False
        # Ray Data logs each execution's start and end at INFO (and its disabled bars at WARNING)
        logging.getLogger("ray.data").setLevel(logging.ERROR if self.quiet else logging.WARNING)
        context.execution_options.preserve_order = True
        ds = ray.data.from_items([{"window": i, "data": p} for i, p in enumerate(payloads)])
        del payloads
        ds = ds.map_batches(
            ScoreActor,
            fn_constructor_kwargs={"model": self.model, "config": self.actor_config},
            batch_size=1,  # one window per call: the local engine's windows, scored as it scores them
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            # Ray Data restarts a dead actor and retries its window forever: a model that does not fit
            # (an actor killed for memory again and again) would hang the run instead of failing it
            # (given through ray_remote_args_fn: Ray 2.60 deprecates them as keyword arguments)
            ray_remote_args_fn=restart_limits,
            **self.resources,
        )
        pending: dict[int, dict[str, Any]] = {}
        following = 0
        for row in ds.iter_rows():
            pending[row["window"]] = row
            while following in pending:  # in input order, whatever order Ray hands them back in
                row = pending.pop(following)
                following += 1
                t = time.perf_counter()
                result = pickle.loads(row["data"])
                stats["driver_serial_s"] += time.perf_counter() - t
                stats["actor_serial_s"] += row["unpickle_s"]
                stats["score_s"] += row["score_s"]
                stats["load_s"] += row["load_s"]
                if result["model_error"] is not None:
                    raise ModelError(result["model_error"])
                self.truncated += result["truncated"]
                if self.stale is None:
                    self.stale = result.get("stale")
                self.limit = result["limit"]
                stats["wall_s"] = time.perf_counter() - start
                yield result["records"]
                if result["error"] is not None:
                    raise RecordError(*result["error"])
        stats["wall_s"] = time.perf_counter() - start
        if following != stats["windows"]:  # pragma: no cover - Ray lost a window
            raise EngineError(f"Ray returned {following} of {stats['windows']} windows")
        if reader_error is not None:
            raise reader_error
