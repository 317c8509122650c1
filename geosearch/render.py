"""PNG renderings of mosaic windows (previews for tools and answers)."""

from __future__ import annotations

import io

from geosearch.geo import Bounds
from geosearch.index import TileIndex

MAX_PREVIEW_BYTES = 1_000_000
PREVIEW_SIDE = 512


def render_png(
    index: TileIndex, bounds: Bounds, max_side: int = PREVIEW_SIDE, outlines: list | None = None
) -> bytes:
    """The window as a PNG (≤ 1 MB) whose long side is ``max_side`` pixels (read from overviews, or
    resampled up for a small window, so a client sees a useful picture), optionally with polygons
    (mosaic CRS) outlined in yellow."""
    from PIL import Image, ImageDraw

    w_m, h_m = bounds[2] - bounds[0], bounds[3] - bounds[1]
    mosaic = index.mosaic()
    side = int(max(16, max_side))
    if w_m >= h_m:
        size = (max(1, round(side * h_m / w_m)), side)
    else:
        size = (side, max(1, round(side * w_m / h_m)))
    img = Image.fromarray(mosaic.read(bounds, size).rgb)
    if outlines:
        draw = ImageDraw.Draw(img)
        sx, sy = size[1] / w_m, size[0] / h_m
        for geom in outlines:
            for poly in getattr(geom, "geoms", [geom]):
                if not hasattr(poly, "exterior"):
                    continue
                pts = [((x - bounds[0]) * sx, (bounds[3] - y) * sy) for x, y in poly.exterior.coords]
                draw.line(pts, fill=(255, 255, 0), width=2)
    while True:
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1)  # optimize=True: 15x the time, 12 % smaller
        data = buf.getvalue()
        if len(data) <= MAX_PREVIEW_BYTES or min(img.size) <= 16:
            return data
        img = img.resize((max(1, img.size[0] * 3 // 4), max(1, img.size[1] * 3 // 4)))
