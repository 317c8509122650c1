"""Tool ``zoom_tile``: one pyramid step inside a tile or bbox -> ranked finer sub-windows + a PNG preview."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator
from shapely.geometry import box

from geosearch.geo import to_wgs84
from geosearch.refine.common import query_vector, window_bounds
from geosearch.render import render_png
from geosearch_tools.coarse_search import prompts_of
from geosearch_tools.common import (
    BBox,
    ProgressFn,
    Prompts,
    QueryText,
    StrictInput,
    Workspace,
    check_window_bbox,
    report,
)


class WindowRef(StrictInput):
    index: str = Field(min_length=1, max_length=1000, description="index path (relative to a data root)")
    tile: str | None = Field(None, max_length=200, description="a tile id from coarse_search")
    bbox: BBox | None = Field(None, description="[minx, miny, maxx, maxy] in lon/lat (instead of tile)")
    query: QueryText | None = Field(None, description="query in words (parsed into prompts)")
    prompts: Prompts | None = Field(None, description="prompts to embed")
    negative_prompts: Prompts | None = None

    @model_validator(mode="after")
    def _check(self):
        if (self.tile is None) == (self.bbox is None):
            raise ValueError("give exactly one of tile or bbox")
        check_window_bbox(self.bbox)
        if not (self.query and self.query.strip()) and not self.prompts:
            raise ValueError("give a query (words) or prompts")
        return self


class ZoomTileInput(WindowRef):
    k: int = Field(9, ge=1, le=64, description="how many sub-windows to return")
    factor: float = Field(0.5, gt=0.1, lt=1.0, description="sub-window side as a share of the window side")
    preview: bool = Field(True, description="attach a PNG preview of the window (≤ 1 MB)")


class SubWindow(BaseModel):
    rank: int
    score: float
    scale_m: float
    level: int
    parent_tile: str | None
    bbox: list[float] = Field(description="EPSG:4326")
    polygon: dict = Field(description="GeoJSON Polygon, EPSG:4326")
    gain: float | None = Field(None, description="score minus the parent window's score")


class Preview(BaseModel):
    uri: str
    mime_type: str = "image/png"
    bytes: int
    bbox: list[float]


class ZoomTileOutput(BaseModel):
    index: str
    window_bbox: list[float] = Field(description="the zoomed window, EPSG:4326")
    window_score: float
    prompts: list[str]
    windows: list[SubWindow]
    preview: Preview | None = None


def preview_for(ws: Workspace, h, bounds, outlines=None, tag: str = "") -> Preview:
    png = render_png(h.index, bounds, outlines=outlines)
    pid = ws.put_preview(f"{h.path}|{bounds}|{tag}", png)
    bb = list(to_wgs84(box(*bounds), h.index.crs).bounds)
    return Preview(uri=f"geosearch://previews/{pid}", bytes=len(png), bbox=bb)


def run(inp: ZoomTileInput, ws: Workspace, progress: ProgressFn | None = None) -> ZoomTileOutput:
    from shapely.geometry import mapping

    from geosearch.refine import zoom

    pos, neg = prompts_of(inp.query, inp.prompts, inp.negative_prompts)
    with ws.using(inp.index) as h:
        idx = h.index
        bounds = window_bounds(idx, inp.tile, inp.bbox)
        report(progress, 0, 3, "embedding prompts")
        vec = query_vector(idx, pos, neg)
        from geosearch.refine.common import embed_windows

        emb, _ = embed_windows(idx, [bounds])
        wscore = float(emb[0] @ vec)
        report(progress, 1, 3, "embedding sub-windows")
        wins = zoom(idx, bounds, vec, factor=inp.factor, tile_id=inp.tile)
        out = []
        for rank, w in enumerate(wins[: inp.k], start=1):
            poly = to_wgs84(box(*w.bounds), idx.crs)
            out.append(
                SubWindow(
                    rank=rank,
                    score=w.score,
                    scale_m=w.scale_m,
                    level=w.level,
                    parent_tile=w.tile_id,
                    bbox=list(poly.bounds),
                    polygon=mapping(poly),
                    gain=w.score - wscore,
                )
            )
        report(progress, 2, 3, "rendering preview")
        prev = None
        if inp.preview:
            prev = preview_for(ws, h, bounds, outlines=[box(*w.bounds) for w in wins[:1]], tag="zoom")
        window_bbox = list(to_wgs84(box(*bounds), idx.crs).bounds)
    report(progress, 3, 3, "done")
    return ZoomTileOutput(
        index=h.name, window_bbox=window_bbox, window_score=wscore, prompts=pos, windows=out, preview=prev
    )
