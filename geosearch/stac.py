"""STAC Items and ItemCollections as mosaic inputs (read with pystac).

A STAC input (a local ``.json`` file or an ``http(s)`` URL) becomes the href of one image asset per
Item: the asset named by ``asset``, or else the one asset with role ``data``, else the one with role
``visual``, else the one GeoTIFF / JPEG 2000 (by media type or file suffix). Several candidates at
one step and none later is an error naming them (pick one with ``--asset NAME``). Relative hrefs
are resolved against the document's location. The index records the asset hrefs, not the STAC
document, so later reads go straight to the imagery.
"""

from __future__ import annotations

import json
from pathlib import Path

from geosearch.errors import InputError
from geosearch.remote import fetch_text, is_http, url_name

RASTER_MEDIA = ("image/tiff", "image/geotiff", "image/vnd.stac.geotiff", "image/jp2")
RASTER_HREF_SUFFIXES = (".tif", ".tiff", ".geotiff", ".jp2", ".vrt", ".img")
NOT_IMAGERY_ROLES = {"thumbnail", "overview", "metadata", "cloud", "cloud-shadow", "snow-ice"}


def looks_like_stac(path: str | Path, head: bytes = b"") -> bool:
    """A STAC document by name (``.json``/``.geojson``) or by its first bytes (``{``)."""
    name = url_name(str(path)) if is_http(path) else Path(path).name
    return name.lower().endswith((".json", ".geojson")) or head.lstrip().startswith(b"{")


def load_document(source: str | Path) -> tuple[dict, str]:
    """The JSON of a STAC document and its absolute location (a URL or a local path)."""
    if is_http(source):
        text, where = fetch_text(str(source)), str(source)
    else:
        p = Path(source).expanduser()
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read STAC document {p}: {exc}") from None
        where = str(p.absolute())
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{source} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{source} is not a STAC Item or ItemCollection (a JSON {type(doc).__name__})")
    return doc, where


def asset_hrefs(source: str | Path, asset: str | None = None) -> list[str]:
    """One image href per Item of a STAC Item or ItemCollection (see the module docstring)."""
    try:
        import pystac
    except ImportError as exc:  # a declared dependency; named clearly if an install lacks it
        raise InputError("STAC inputs need pystac: pip install pystac") from exc
    doc, where = load_document(source)
    kind = doc.get("type")
    try:
        if kind == "Feature":
            items = [pystac.Item.from_dict(doc, href=where, preserve_dict=False)]
        elif kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(doc, preserve_dict=False))
        elif kind in ("Collection", "Catalog"):
            raise InputError(
                f"{source} is a STAC {kind}, not an Item: give its Items (or an ItemCollection, e.g. a "
                "STAC API search result)"
            )
        else:
            raise InputError(f"{source} is not a STAC Item or ItemCollection (type {kind!r})")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - pystac raises KeyError, TypeError, STACError...
        raise InputError(f"{source} is not a valid STAC document: {type(exc).__name__}: {exc}") from None
    if not items:
        raise InputError(f"STAC ItemCollection {source} has no Items")
    hrefs = []
    for item in items:
        if item.get_self_href() is None:  # items of a collection: relative to the collection file
            item.set_self_href(where)
        name = pick_asset(item, asset, source)
        href = item.assets[name].get_absolute_href() or item.assets[name].href
        hrefs.append(href)
    return hrefs


def _is_raster(a) -> bool:
    media = (a.media_type or "").lower()
    if media:
        return media.startswith(RASTER_MEDIA)
    return a.href.lower().split("?", 1)[0].endswith(RASTER_HREF_SUFFIXES)


def pick_asset(item, asset: str | None, source: str | Path) -> str:
    """The key of the asset to index in ``item``."""
    assets = item.assets
    if asset is not None:
        if asset not in assets:
            raise InputError(
                f"STAC item {item.id!r} ({source}) has no asset {asset!r}; its assets: "
                f"{', '.join(sorted(assets)) or 'none'}"
            )
        return asset
    images = {k: a for k, a in assets.items() if _is_raster(a) and not NOT_IMAGERY_ROLES & set(a.roles or [])}
    ambiguous: list[str] = []
    steps = (
        lambda a: "data" in (a.roles or []),
        lambda a: "visual" in (a.roles or []),
        lambda a: True,
    )
    for step in steps:
        found = sorted(k for k, a in images.items() if step(a))
        if len(found) == 1:
            return found[0]
        if len(found) > 1 and not ambiguous:
            ambiguous = found
    if ambiguous:
        raise InputError(
            f"STAC item {item.id!r} ({source}) has several image assets ({', '.join(ambiguous[:12])}): "
            "choose one with --asset NAME"
        )
    listed = ", ".join(f"{k} ({a.media_type or 'no media type'})" for k, a in assets.items())
    raise InputError(
        f"STAC item {item.id!r} ({source}) has no GeoTIFF or JPEG 2000 asset to index; "
        f"its assets: {listed or 'none'}"
    )
