"""DuckDB connections, with the spatial extension loaded offline when asked for.

The extension file ships in the PyPI package ``duckdb-extension-spatial``, whose version must
match ``duckdb`` exactly. We never ``INSTALL`` from the network. Loading it costs 0.3-1 s, so
connections that only read tables (opening an index for search) pass ``spatial=False``: DuckDB
reads GEOMETRY columns without it, and only the ``ST_*`` functions of relations and layers need it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from geosearch.errors import DatabaseDamagedError, DatabaseLockedError, GeoSearchError, InputError
from geosearch.fileio import check_regular_file


def spatial_extension_path() -> Path:
    """Path of the spatial extension binary shipped by ``duckdb-extension-spatial``."""
    try:
        import duckdb_extension_spatial as pkg  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - install problem
        raise GeoSearchError(
            "the DuckDB spatial extension is missing: pip install "
            f"'duckdb-extension-spatial=={duckdb.__version__}'"
        ) from exc
    found = _find_extension_file(Path(pkg.__file__).parent)
    if found is None:  # pragma: no cover - install problem
        raise GeoSearchError(f"no spatial.duckdb_extension file inside {Path(pkg.__file__).parent}")
    return found


def _find_extension_file(root: Path) -> Path | None:
    for candidate in sorted(root.rglob("*.duckdb_extension*")):
        return candidate
    return None


def connect(
    path: str | Path | None = None, *, read_only: bool = False, spatial: bool = True
) -> duckdb.DuckDBPyConnection:
    """Open ``path`` (or an in-memory database), with the spatial extension loaded unless
    ``spatial=False``. A read-only connection to a file may read nothing but that file
    (``enable_external_access`` off), so a crafted index cannot read other files through views.
    Failures name what is wrong: locked by a writer, damaged, not a database, not a regular file."""
    config = {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}
    database = ":memory:" if path is None else str(path)
    existed = True
    if path is not None:
        check_regular_file(Path(path), "index", must_exist=read_only)  # a FIFO would hang
        existed = os.path.lexists(path)
    try:
        con = duckdb.connect(database, read_only=read_only, config=config)
    except duckdb.Error as exc:
        if not existed and not os.path.lexists(database):  # creating it failed: not a damaged index
            raise cannot_create_error(Path(database), str(exc)) from exc
        raise describe_error(exc, database) from exc
    try:
        if spatial:
            load_spatial(con)
        if read_only and path is not None:
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
    except duckdb.Error as exc:
        con.close()
        raise describe_error(exc, database) from exc
    return con


def cannot_create_error(path: Path, reason: str) -> InputError:
    """A new database file (or its folder) that cannot be created, as one clear line."""
    low = reason.lower()
    missing = next((p for p in reversed(path.parents) if not os.path.isdir(p)), None)
    if "permission denied" in low or "operation not permitted" in low:
        why = "permission denied"
    elif "read-only file system" in low:
        why = "read-only file system"
    elif "no space left" in low:
        why = "no space left on device"
    elif missing is not None:
        why = f"folder {missing} does not exist"
    elif "no such file" in low:
        why = f"folder {path.parent} does not accept new files"
    else:
        why = reason.splitlines()[0][:200] if reason else "unknown error"
    return InputError(f"cannot create {path}: {why}")


def describe_error(exc: Exception, database: str) -> GeoSearchError:
    """A DuckDB failure as one clear line."""
    text = str(exc)
    low = text.lower()
    name = Path(database).name
    if "could not set lock" in low or "conflicting lock" in low:
        return DatabaseLockedError(
            f"index {name} is being written by another process (it holds the lock); "
            "try again when that build or layer change has finished"
        )
    if "no space left" in low:
        return GeoSearchError(
            f"no space left on device while writing {name}: free some space and rerun the same "
            "command to resume (the index is not corrupted)"
        )
    if "not a valid duckdb database" in low or "the file is not a valid" in low:
        return DatabaseDamagedError(f"{name} is not a GeoSearch index (not a DuckDB database file)")
    if any(w in low for w in ("corrupt", "checksum", "ioexception", "io error", "serialization error")):
        first = text.splitlines()[0][:200]
        return DatabaseDamagedError(
            f"index {name} is damaged ({first}); rebuild it with geosearch index ... --overwrite"
        )
    return GeoSearchError(f"cannot open DuckDB database {name}: {text.splitlines()[0][:300]}")


def load_spatial(con: duckdb.DuckDBPyConnection) -> None:
    ext = spatial_extension_path()
    try:
        con.execute(f"LOAD '{ext.as_posix()}'")
    except duckdb.Error:
        # Older packaging exposes the extension under the default extension directory.
        con.execute("LOAD spatial")


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection, **frames) -> Iterator[duckdb.DuckDBPyConnection]:
    """One transaction: COMMIT when the block ends, ROLLBACK if it raises. Keyword arguments are
    data frames registered as views under their names for the duration (bulk inserts)."""
    for name, frame in frames.items():
        con.register(name, frame)
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
        con.execute("COMMIT")
    except BaseException as exc:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:  # the failed COMMIT already ended it: keep the real error
            pass
        if isinstance(exc, duckdb.Error):
            raise describe_error(exc, _database_name(con)) from exc
        raise
    finally:
        for name in frames:
            try:
                con.unregister(name)
            except duckdb.Error:
                pass


def _database_name(con) -> str:
    try:
        row = con.execute("SELECT path FROM duckdb_databases() WHERE NOT internal LIMIT 1").fetchone()
        return str(row[0]) if row and row[0] else "the index"
    except duckdb.Error:
        return "the index"
