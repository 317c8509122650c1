"""Image flags of answer regions: ``low_margin`` and ``ambiguous_scale``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geosearch.geo import box_intersections
from geosearch.refine.heatmap import Candidate
from geosearch.refine.pyramid import Window

LOW_MARGIN = 0.01  # final-score gap to the next region, or s_region - s_neg
SCALE_EPS = 0.01  # another scale (>= 2x apart) scoring within this of the region's s_region


def add_flags(cands: Sequence[Candidate], windows: Sequence[Window]) -> None:
    """Set the image flags on the ranked candidates (in place). Relation flags come from the one
    relation applier (:mod:`geosearch.relations.apply`)."""
    wb = np.array([w.bounds for w in windows], float).reshape(-1, 4)
    w_area = (wb[:, 2] - wb[:, 0]) * (wb[:, 3] - wb[:, 1])
    w_scale = np.array([w.scale_m for w in windows], float)
    w_score = np.array([w.score for w in windows], float)
    for i, c in enumerate(cands):
        flags = set(c.flags)
        nxt = cands[i + 1].score if i + 1 < len(cands) else None
        s_reg = float(c.features.get("s_region", c.score))
        s_neg = float(c.features.get("s_neg", -1.0))
        if (nxt is not None and c.score - nxt < LOW_MARGIN) or s_reg - s_neg < LOW_MARGIN:
            flags.add("low_margin")
        scale = c.scale_m or 0.0
        if scale > 0 and len(wb):
            cb = c.bbox_map
            c_area = (cb[2] - cb[0]) * (cb[3] - cb[1])
            inside = box_intersections(wb, cb) / np.maximum(np.minimum(w_area, c_area), 1e-12)
            ratio = np.maximum(w_scale / scale, scale / np.maximum(w_scale, 1e-12))
            if np.any((ratio >= 2) & (inside >= 0.7) & (w_score >= s_reg - SCALE_EPS)):
                flags.add("ambiguous_scale")
        c.flags = sorted(flags)
