"""Distributed index builds on Ray Data (``geosearch index ... --ray auto|ADDRESS``).

The driver (this process) does everything a single-process build does except embedding the tiles:
it opens the mosaic, plans the tiles, skips those already in the index, segments and embeds the
region proposals, and writes DuckDB and the vector store (:func:`geosearch.index.build_index`).
The tiles still missing are cut into shards of a few model batches; a Ray Data actor pool reads
each shard's windows and embeds them (each actor opens the mosaic and loads the model once; a
shard is embedded through the same read / embed pipeline as a local build,
:func:`geosearch.index._embed_stream`). Each result comes back to the driver and is written as a
shard file ``OUT.shards/<hash>.npz`` (tile ids, bounds, float32 embeddings; atomically). When every
shard is on disk they are merged into the index through the build's own writer and the folder is
removed. A killed build resumes from what is on disk: tiles already in DuckDB and tiles in a shard
file are not embedded again.

Ray is imported only here, and only when a Ray build runs (``pip install 'geosearch[ray]'``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geosearch.errors import GeoSearchError, InputError
from geosearch.fileio import atomic_path, atomic_write_json
from geosearch.index import BuildReport, TileChunk, _embed_stream, _progress, build_index
from geosearch.models import EmbeddingModel
from geosearch.mosaic import Mosaic
from geosearch.settings import Settings, get_settings

# an ADDRESS that does not answer within this is refused (ray.init itself retries for minutes)
CONNECT_TIMEOUT_S = 10.0
SHARD_BATCHES = 4  # model batches per shard: enough for an actor to overlap its reads with the model
MANIFEST = "manifest.json"
# the Settings fields an actor needs to load the same model (nothing else, no secrets, leaves the driver)
_MODEL_FIELDS = ("model", "device", "threads", "batch_size", "offline", "models_dir", "cache_dir")


def shard_root(out: str | Path) -> Path:
    """The shard folder of the index at ``out``: ``OUT.shards/`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


@dataclass
class RayStats:
    """What the distributed part of a build did (printed by the CLI beside the build report)."""

    address: str = ""
    workers: int = 0
    gpus_per_worker: float = 0.0
    threads_per_worker: int = 0
    shards_total: int = 0
    shards_reused: int = 0
    shards_computed: int = 0
    tiles_computed: int = 0
    embed_seconds: float = 0.0  # driver wall time from submitting the shards to the last shard on disk
    first_shard_seconds: float = 0.0  # ... to the first one: mostly the actors' start (torch, the model)
    merge_seconds: float = 0.0
    worker_model_seconds: float = 0.0  # summed over workers (they run in parallel)
    worker_read_seconds: float = 0.0
    shard_names: list[str] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "shard_names"}
        for k in (
            "embed_seconds",
            "first_shard_seconds",
            "merge_seconds",
            "worker_model_seconds",
            "worker_read_seconds",
        ):
            out[k] = round(out[k], 3)
        out["tiles_per_s"] = round(self.tiles_computed / self.embed_seconds, 2) if self.embed_seconds else 0.0
        return out


# -- connecting --------------------------------------------------------------------------------
def import_ray():
    """``ray`` with ``ray.data``, or a one-line InputError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise InputError(
            f"--ray needs Ray Data, which is not installed ({exc}); pip install 'geosearch[ray]'"
        ) from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InputError(f"--ray {address!r}: give auto or a cluster address HOST:PORT (or ray://HOST:PORT)")
    return host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse an ADDRESS nothing listens on within ``timeout``: ``ray.init`` itself retries for
    minutes before it gives up."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise InputError(
            f"cannot reach the Ray cluster at {address}: {why} (start it with `ray start --head`, or use --ray auto)"
        ) from None


def connect(address: str = "auto", timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Join the Ray runtime: ``auto`` joins a running local one or starts one (``ray.init()``),
    anything else is a cluster address. Returns True when this call started the connection (the
    caller then shuts it down); a process already connected (``ray.init`` earlier) is reused."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address != "auto":
        check_reachable(address, timeout)
        kwargs["address"] = address
    else:
        kwargs["include_dashboard"] = False
        kwargs["logging_level"] = logging.ERROR  # a local runtime's start-up notes
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise InputError(f"cannot join the Ray runtime at {address}: {str(exc).splitlines()[0]}") from None
    return True


# -- the actors --------------------------------------------------------------------------------
class _ShardEmbedder:
    """A Ray Data actor: opens the mosaic and loads the model once, then embeds one shard per call
    (its windows read by :func:`geosearch.index._embed_stream`, overlapping the model)."""

    def __init__(self, mosaic_args: dict, model_settings: dict, model_id: str) -> None:
        from geosearch.models import get_model
        from geosearch.models.model_id import views_of

        settings = Settings(**model_settings)
        self.mosaic = Mosaic(**mosaic_args)
        self.model = get_model(settings.model, settings=settings, views=views_of(model_id))
        if self.model.model_id != model_id:
            raise GeoSearchError(
                f"a Ray worker loaded {self.model.model_id!r}, the driver {model_id!r}: the workers "
                "must see the same model weights (install them on every node)"
            )
        self.batch = max(1, settings.batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"shard": [], "embedding": [], "dim": [], "model_s": [], "read_s": []}
        for name, bounds in zip(batch["shard"], batch["bounds"]):
            windows = [tuple(b) for b in np.asarray(list(bounds), np.float64).reshape(-1, 4)]
            chunks = [windows[s : s + self.batch] for s in range(0, len(windows), self.batch)]
            parts: list[np.ndarray] = []
            model_s, read_s = _embed_stream(self.mosaic, self.model, chunks, lambda c: c, _collect(parts))
            emb = np.concatenate(parts).astype("<f4")
            out["shard"].append(name)
            out["embedding"].append(emb.tobytes())
            out["dim"].append(emb.shape[1])
            out["model_s"].append(model_s)
            out["read_s"].append(read_s)
        return {
            "shard": np.array(out["shard"]),
            "embedding": np.array(out["embedding"], dtype=object),
            "dim": np.array(out["dim"], np.int64),
            "model_s": np.array(out["model_s"]),
            "read_s": np.array(out["read_s"]),
        }


def _collect(parts: list[np.ndarray]) -> Callable[[Any, np.ndarray], None]:
    return lambda _chunk, emb: parts.append(emb)


# -- shards ------------------------------------------------------------------------------------
def _shard_name(tile_ids: Sequence[str], bounds: np.ndarray) -> str:
    h = hashlib.sha256("\n".join(tile_ids).encode())
    h.update(np.ascontiguousarray(bounds, np.float64).tobytes())
    return h.hexdigest()[:24]


def _manifest(mosaic: Mosaic, emb_model: EmbeddingModel) -> dict:
    desc = mosaic.describe()
    return {"model_id": emb_model.model_id, "image_size": emb_model.image_size, "mosaic": desc}


def _load_shards(root: Path, manifest: dict) -> dict[str, Path]:
    """The shard files already on disk for this model and mosaic; a folder left by another build
    (other model, mosaic or stretch) is emptied first."""
    if not root.is_dir():
        return {}
    try:
        same = json.loads((root / MANIFEST).read_text()) == json.loads(json.dumps(manifest))
    except (OSError, ValueError):
        same = False
    if not same:
        _clear(root)
        return {}
    return {p.stem: p for p in sorted(root.glob("*.npz")) if not p.name.startswith(".")}


def _clear(root: Path) -> None:
    """Remove the shard files and manifest (and the folder once empty): only what builds wrote."""
    for p in [*root.glob("*.npz"), *root.glob(".*.npz"), root / MANIFEST]:
        p.unlink(missing_ok=True)
    try:
        root.rmdir()
    except OSError:
        pass


def _read_shard(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return z["tile_ids"], z["bounds"], z["embeddings"]


def _write_shard(path: Path, tile_ids: Sequence[str], bounds: np.ndarray, emb: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, tile_ids=np.array(tile_ids), bounds=bounds, embeddings=emb.astype(np.float32))


# -- the embedder ------------------------------------------------------------------------------
class RayTileEmbedder:
    """A :data:`geosearch.index.TileEmbedder` that embeds on a Ray Data actor pool through shard
    files, then merges them through the build's writer (see the module docstring).

    ``workers``: actors (default: one per GPU of the cluster, else one per two CPUs);
    ``shard_tiles``: tiles per shard (default ``SHARD_BATCHES`` model batches, or fewer so that
    each actor gets two shards at least);
    ``on_shard(done, total)``: called after each shard file is written. It returns (the Ray
    phase's wall time, 0): the build report's ``model_seconds`` is then the time the driver waited
    for the actors (reads included; their own split is in :attr:`stats`)."""

    def __init__(
        self,
        out: str | Path,
        settings: Settings,
        *,
        workers: int | None = None,
        shard_tiles: int | None = None,
        progress: bool = True,
        on_shard: Callable[[int, int], None] | None = None,
    ) -> None:
        self.root = shard_root(out)
        self.settings = settings
        self.workers = workers
        self.shard_tiles = shard_tiles
        self.progress = progress
        self.on_shard = on_shard
        self.stats = RayStats()

    def __call__(
        self,
        mosaic: Mosaic,
        emb_model: EmbeddingModel,
        chunks: Sequence[TileChunk],
        write: Callable[[TileChunk, np.ndarray], None],
    ) -> tuple[float, float]:
        todo = [tf for chunk in chunks for tf in chunk]
        if not todo:
            if self.root.is_dir():
                _clear(self.root)
            return 0.0, 0.0
        manifest = _manifest(mosaic, emb_model)
        on_disk = _load_shards(self.root, manifest)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.root / MANIFEST, manifest)
        wanted = {t.tile_id: (t, f) for t, f in todo}
        covered: set[str] = set()
        for path in on_disk.values():
            try:
                ids, bounds, _ = _read_shard(path)
            except (OSError, ValueError, KeyError):  # unreadable: computed again
                path.unlink(missing_ok=True)
                continue
            planned = [wanted.get(str(i)) for i in ids]
            if any(p is None for p in planned) or not np.allclose(
                bounds, np.array([p[0].bounds for p in planned]), rtol=0, atol=1e-6
            ):
                continue  # tiles merged already, or another grid: not used (removed with the folder)
            covered.update(str(i) for i in ids)
            self.stats.shard_names.append(path.stem)
        self.stats.shards_reused = len(self.stats.shard_names)
        rest = [(t, f) for t, f in todo if t.tile_id not in covered]
        self.stats.shards_total = self.stats.shards_reused
        t0 = time.perf_counter()
        if rest:
            self._run(mosaic, emb_model, rest, len(todo) - len(rest))
        self.stats.embed_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        self._merge(wanted, write)
        self.stats.merge_seconds = time.perf_counter() - t0
        _clear(self.root)  # every shard is in the index now
        return self.stats.embed_seconds, 0.0

    def _run(self, mosaic: Mosaic, emb_model: EmbeddingModel, rest: TileChunk, initial: int) -> None:
        """Embed the tiles of ``rest`` on an actor pool, writing each shard's file as it arrives."""
        ray = import_ray()
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # the build's own bar below
        ctx.print_on_execution_start = False
        quiet = logging.getLogger("ray.data")  # its per-run notes; warnings of substance stay
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 1)), float(resources.get("GPU", 0))
        use_gpu = gpus >= 1 and self.settings.device in ("auto", "cuda")
        workers = self.workers or (int(gpus) if use_gpu else max(1, int(cpus) // 2))
        threads = self.settings.threads or max(1, int(cpus // workers))
        self.stats.address = ray.get_runtime_context().gcs_address
        self.stats.workers, self.stats.threads_per_worker = workers, threads
        self.stats.gpus_per_worker = 1.0 if use_gpu else 0.0
        # up to SHARD_BATCHES model batches per shard, fewer for a small build so every actor gets some
        per = self.shard_tiles or min(
            SHARD_BATCHES * max(1, self.settings.batch_size), max(1, -(-len(rest) // (2 * workers)))
        )
        shards = [rest[s : s + per] for s in range(0, len(rest), per)]
        self.stats.shards_total += len(shards)
        model_settings = self.settings.model_dump(include=set(_MODEL_FIELDS))
        model_settings.update(model=emb_model.name, threads=threads, device="cuda" if use_gpu else "cpu")
        mosaic_args = {
            "inputs": list(mosaic.paths),  # Paths and URL strings as resolved here
            "bands": list(mosaic.bands),
            "stretch": mosaic.stretch,
            "stretch_params": [list(p) for p in mosaic.stretch_params],
            "percentiles": mosaic.percentiles,
            "expand_stac": False,
        }
        by_name: dict[str, tuple[list[str], np.ndarray]] = {}
        rows = []
        for shard in shards:
            ids = [t.tile_id for t, _ in shard]
            bounds = np.array([t.bounds for t, _ in shard], np.float64)
            name = _shard_name(ids, bounds)
            by_name[name] = (ids, bounds)
            rows.append({"shard": name, "bounds": bounds.ravel().tolist()})
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _ShardEmbedder,
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=0 if use_gpu else min(float(threads), cpus / workers),
            num_gpus=1 if use_gpu else 0,
            fn_constructor_kwargs={
                "mosaic_args": mosaic_args,
                "model_settings": model_settings,
                "model_id": emb_model.model_id,
            },
        )
        total = sum(len(s) for s in shards) + initial
        bar = _progress(total, initial, self.progress, "embedding (ray)")
        rows_iter = ds.iter_rows()
        t0 = time.perf_counter()
        try:
            for row in rows_iter:
                if not self.stats.first_shard_seconds:
                    self.stats.first_shard_seconds = time.perf_counter() - t0
                name = str(row["shard"])
                ids, bounds = by_name[name]
                emb = np.frombuffer(row["embedding"], "<f4").reshape(len(ids), int(row["dim"]))
                _write_shard(self.root / f"{name}.npz", ids, bounds, emb)
                self.stats.shard_names.append(name)
                self.stats.shards_computed += 1
                self.stats.tiles_computed += len(ids)
                self.stats.worker_model_seconds += float(row["model_s"])
                self.stats.worker_read_seconds += float(row["read_s"])
                bar.update(len(ids))
                if self.on_shard:
                    self.on_shard(len(self.stats.shard_names), self.stats.shards_total)
        except Exception as exc:
            inner = _unwrap(exc)  # a worker's GeoSearchError arrives wrapped by Ray
            if inner is exc:
                raise
            raise inner from None
        finally:
            close = getattr(rows_iter, "close", None)
            if close:
                close()  # stops the actor pool (a failed build must not keep the CPUs)
            bar.close()
            quiet.setLevel(level)

    def _merge(self, wanted: dict[str, tuple], write: Callable[[TileChunk, np.ndarray], None]) -> None:
        """Write every shard's tiles through the build's writer (one transaction per shard)."""
        written: set[str] = set()
        for name in self.stats.shard_names:
            ids, _, emb = _read_shard(self.root / f"{name}.npz")
            keep = [i for i, t in enumerate(ids) if str(t) in wanted and str(t) not in written]
            if not keep:
                continue
            chunk = [wanted[str(ids[i])] for i in keep]
            write(chunk, emb[keep])
            written.update(str(ids[i]) for i in keep)


def _unwrap(exc: BaseException) -> BaseException:
    """The GeoSearchError a worker raised, out of Ray's wrappers (``RayTaskError.cause``, chained
    causes); else ``exc`` itself."""
    seen = exc
    for _ in range(16):
        inner = getattr(seen, "cause", None)
        if isinstance(inner, BaseException) and inner is not seen:
            seen = inner
            continue
        if isinstance(seen, GeoSearchError):
            return seen
        if seen.__cause__ is None:
            break
        seen = seen.__cause__
    return exc


def build_index_ray(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    address: str = "auto",
    workers: int | None = None,
    shard_tiles: int | None = None,
    model: str | EmbeddingModel | None = None,
    settings: Settings | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_shard: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> tuple[BuildReport, RayStats]:
    """:func:`geosearch.index.build_index` with the tiles embedded on Ray (``address``: ``auto``
    or a cluster address). Other keyword arguments are build_index's. Returns the build report and
    what the Ray part did."""
    if workers is not None and workers < 1:
        raise InputError("--ray-workers must be at least 1")
    settings = settings or get_settings()
    started = connect(address)
    try:
        if overwrite and shard_root(out).is_dir():
            _clear(shard_root(out))
        embedder = RayTileEmbedder(
            out, settings, workers=workers, shard_tiles=shard_tiles, progress=progress, on_shard=on_shard
        )
        report = build_index(
            inputs,
            out,
            model=model,
            settings=settings,
            overwrite=overwrite,
            progress=progress,
            embed_tiles=embedder,
            **kwargs,
        )
        embedder.stats.address = embedder.stats.address or address
        return report, embedder.stats
    finally:
        if started:
            import ray

            ray.shutdown()


__all__ = ["RayStats", "RayTileEmbedder", "build_index_ray", "check_reachable", "connect", "shard_root"]
