"""Merging region candidates found in several tiles and at several scales.

Candidates are taken best score first; one that overlaps an already kept candidate by IoU >=
``iou`` (or is mostly contained in it, ``contain``) is merged into it: ``nms`` keeps the kept
geometry, ``union`` grows it to the union. Either way the merged candidate keeps the best score
and the evidence tiles of all of them, and counts how many candidates it absorbed.
"""

from __future__ import annotations

from typing import Literal

from geosearch.geo import overlap_ratios, to_wgs84
from geosearch.index import TileIndex
from geosearch.refine.heatmap import Candidate


def merge_candidates(
    cands: list[Candidate],
    *,
    iou: float = 0.5,
    contain: float = 1.01,
    mode: Literal["nms", "union"] = "nms",
    index: TileIndex | None = None,
) -> list[Candidate]:
    """Merge overlapping candidates (see module doc); returns the kept ones, best first.

    ``contain`` > 1 disables the containment rule. ``index`` is needed for ``union`` (to recompute
    the EPSG:4326 polygon).
    """
    kept: list[Candidate] = []
    for c in sorted(cands, key=lambda c: -c.score):
        target = None
        for k in kept:
            r_iou, r_in = overlap_ratios(k.polygon_map, c.polygon_map)
            if r_iou >= iou or r_in >= contain:
                target = k
                break
        if target is None:
            kept.append(
                Candidate(
                    **{
                        **c.__dict__,
                        "evidence_tiles": list(c.evidence_tiles),
                        "features": dict(c.features),
                        "flags": list(c.flags),
                    }
                )
            )
            continue
        target.merged += c.merged
        for t in c.evidence_tiles:
            if t not in target.evidence_tiles:
                target.evidence_tiles.append(t)
        scales = target.features.setdefault("merged_scales", [target.scale_m])
        scales.append(c.scale_m)
        if mode == "union":
            target.polygon_map = target.polygon_map.union(c.polygon_map)
            target.bbox_map = tuple(float(v) for v in target.polygon_map.bounds)
            target.mask = None
            if index is not None:
                target.polygon_wgs84 = to_wgs84(target.polygon_map, index.crs)
    return kept
