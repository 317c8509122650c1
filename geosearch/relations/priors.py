"""GIS priors for ranking: per tile, distance to the nearest road / water / building feature and
feature density per km², stored once per index in ``tile_priors``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import shapely

from geosearch.db import transaction
from geosearch.errors import GeoSearchError
from geosearch.relations.layers import IndexRef, get_layer, list_layers, open_index, table_exists
from geosearch.relations.predicates import REGIONS_TABLE, _load_regions, _nearest, to_metric

PRIOR_ROLES = ("roads", "water", "buildings")

_PRIORS_SQL = """
CREATE TABLE IF NOT EXISTS tile_priors (
    tile_id VARCHAR,
    layer VARCHAR,
    role VARCHAR,
    distance_m DOUBLE,
    density_per_km2 DOUBLE,
    PRIMARY KEY (tile_id, layer)
)
"""


def compute_priors(
    index: IndexRef, *, layers: Sequence[str] | None = None, roles: Sequence[str] = PRIOR_ROLES
) -> int:
    """Fill ``tile_priors`` for ``layers`` (default: every layer whose role is in ``roles``).

    Returns the number of rows written; 0 when the index has no ``tiles`` or no such layers.
    """
    with open_index(index) as con:
        if not table_exists(con, "tiles"):
            return 0
        infos = (
            [get_layer(con, n) for n in layers]
            if layers is not None
            else [i for i in list_layers(con) if i.role in roles]
        )
        if not infos:
            return 0
        tiles = con.execute("SELECT tile_id, ST_AsWKB(geom_wgs84) FROM tiles ORDER BY tile_id").fetchall()
        if not tiles:
            return 0
        tile_ids = [str(t[0]) for t in tiles]
        geoms = shapely.from_wkb([bytes(t[1]) for t in tiles])
        con.execute(_PRIORS_SQL)
        written = 0
        for info in infos:
            geoms_m = to_metric(list(geoms), info.metric_crs)
            areas_km2 = shapely.area(geoms_m) / 1e6
            _load_regions(con, geoms_m)
            dist, _ = _nearest(con, info, len(tile_ids), 100.0)
            counts = np.zeros(len(tile_ids))
            for rid, c in con.execute(
                f"SELECT r.rid, count(*) FROM {REGIONS_TABLE} r JOIN {info.table} f "
                "ON ST_Intersects(r.geom_m, f.geom_m) GROUP BY r.rid"
            ).fetchall():
                counts[rid] = c
            with np.errstate(divide="ignore", invalid="ignore"):
                dens = np.where(areas_km2 > 0, counts / areas_km2, np.nan)
            src = pd.DataFrame(
                {
                    "tile_id": tile_ids,
                    "layer": info.name,
                    "role": info.role,
                    "distance_m": dist,
                    "density_per_km2": dens,
                }
            )
            with transaction(con, _gs_priors_src=src):
                con.execute("DELETE FROM tile_priors WHERE layer = ?", [info.name])
                con.execute(
                    "INSERT INTO tile_priors SELECT tile_id, layer, role, "
                    "CASE WHEN isnan(distance_m) THEN NULL ELSE distance_m END, "
                    "CASE WHEN isnan(density_per_km2) THEN NULL ELSE density_per_km2 END "
                    "FROM _gs_priors_src"
                )
            written += len(src)
        return written


def ensure_priors(index: IndexRef) -> int:
    """Compute priors for prior-role layers that have none yet (cheap no-op otherwise)."""
    with open_index(index) as con:
        if not table_exists(con, "tiles"):
            return 0
        have: set[str] = set()
        if table_exists(con, "tile_priors"):
            have = {r[0] for r in con.execute("SELECT DISTINCT layer FROM tile_priors").fetchall()}
        todo = [i.name for i in list_layers(con) if i.role in PRIOR_ROLES and i.name not in have]
        return compute_priors(con, layers=todo) if todo else 0


def load_priors(index: IndexRef, tile_ids: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """Priors aligned to ``tile_ids``: ``{layer: {"distance_m": arr, "density_per_km2": arr, "role": str}}``.

    Missing values are NaN. Empty dict when the index has no priors.
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    with open_index(index, read_only=True) as con:
        if not table_exists(con, "tile_priors"):
            return out
        rows = con.execute(
            "SELECT layer, role, tile_id, distance_m, density_per_km2 FROM tile_priors ORDER BY layer"
        ).fetchall()
    pos = {str(t): i for i, t in enumerate(tile_ids)}
    if len(pos) != len(tile_ids):
        raise GeoSearchError("tile ids must be unique")
    for layer, role, tid, d, dens in rows:
        entry = out.get(layer)
        if entry is None:
            entry = out[layer] = {
                "distance_m": np.full(len(tile_ids), np.nan),
                "density_per_km2": np.full(len(tile_ids), np.nan),
                "role": role,
            }  # type: ignore[dict-item]
        i = pos.get(tid)
        if i is not None:
            entry["distance_m"][i] = np.nan if d is None else d
            entry["density_per_km2"][i] = np.nan if dens is None else dens
    return out
