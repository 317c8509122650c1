"""DuckDB connections with the spatial extension loaded offline.

The extension file ships in the PyPI package ``duckdb-extension-spatial``, whose version must
match ``duckdb`` exactly. We never ``INSTALL`` from the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from geosearch.errors import GeoSearchError


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


def connect(path: str | Path | None = None, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open ``path`` (or an in-memory database) with the spatial extension loaded."""
    config = {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}
    database = ":memory:" if path is None else str(path)
    try:
        con = duckdb.connect(database, read_only=read_only, config=config)
    except duckdb.Error as exc:
        raise GeoSearchError(f"cannot open DuckDB database {database}: {exc}") from exc
    load_spatial(con)
    return con


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
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        for name in frames:
            con.unregister(name)
