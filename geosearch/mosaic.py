"""Mosaics: one raster, a list, a folder, a VRT, URLs or STAC Items, read as one georeferenced RGB surface.

Every read returns one :class:`ImageData` (after rio-tiler): the RGB the models need, a validity
mask, the raw bands (for spectral indices) and the bounds/CRS it covers. Reads are windowed at any
output size; GDAL picks overviews when they exist. Reads whose output resolution is within 1.5x of
the native resolution are counted as full-resolution window reads (a cost the pyramid reports).

Remote rasters (``https://``, ``s3://``, ``gs://``... see :mod:`geosearch.remote`) stay URLs from
input to index; a STAC Item or ItemCollection becomes the hrefs of its image assets
(:mod:`geosearch.stac`).
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NodataShadowWarning, RasterioError, RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import from_bounds

from geosearch import remote
from geosearch.errors import InputError
from geosearch.geo import WGS84, Bounds, as_crs, pixel_size_m, reproject_bounds, transformer
from geosearch.sandbox import OPEN, FilePolicy

# An RGBA raster with a nodata value warns on every masked read that the nodata mask shadows the
# alpha band (about 30 lines per build). The reader means that: nodata first, the alpha band only
# when there is no nodata value (Mosaic.read).
warnings.filterwarnings("ignore", category=NodataShadowWarning)

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".geotiff"}
Stretch = Literal["auto", "percentile", "minmax", "none"]


@dataclass
class ImageData:
    """Pixels of one window: ``rgb`` (H, W, 3) uint8, ``mask`` (H, W) True where valid,
    ``bands`` (C, H, W) float32 raw values of all bands, and the window's bounds and CRS."""

    rgb: np.ndarray
    mask: np.ndarray
    bands: np.ndarray
    bounds: Bounds
    crs: object

    @property
    def valid_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0


@dataclass
class ReadStats:
    reads: int = 0
    full_res_reads: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, full_res: bool) -> None:
        with self.lock:
            self.reads += 1
            self.full_res_reads += int(full_res)


class _Source:
    """One raster file (a local path, or a URL / GDAL path kept as a string); the dataset handle is
    per thread (rasterio handles are not thread-safe)."""

    def __init__(self, path: Path | str, policy: FilePolicy = OPEN):
        self.path = path
        self.policy = policy
        self.remote = isinstance(path, str)
        self.name = remote.url_name(remote.canonical_url(path)) if isinstance(path, str) else path.name
        # remote: timeouts and retries for every open and read, under the policy's own settings
        self.env = {**remote.gdal_env(), **policy.gdal_env()} if self.remote else policy.gdal_env()
        self._local = threading.local()
        try:
            with rasterio.Env(**self.env), rasterio.open(path) as ds:
                policy.check_driver(ds.driver, path)
                self.crs = ds.crs
                self.transform = ds.transform
                self.width, self.height = ds.width, ds.height
                self.count = ds.count
                self.dtype = ds.dtypes[0]
                self.nodata = ds.nodata
                self.bounds: Bounds = tuple(ds.bounds)  # type: ignore[assignment]
                self.has_overviews = bool(ds.count and ds.overviews(1))
                self.colorinterp = [c.name for c in ds.colorinterp]
        except RasterioIOError as exc:
            raise InputError(f"not a readable raster: {path} ({_first_line(exc)})") from exc
        except RasterioError as exc:  # a remote open: credentials, a driver refusing the URL...
            if not self.remote:
                raise
            raise InputError(f"cannot open {path}: {_first_line(exc)}") from None
        if self.crs is None:
            raise InputError(f"raster has no CRS (not georeferenced): {path}")
        if self.transform.b != 0 or self.transform.d != 0:
            raise InputError(f"rotated rasters are not supported: {path}")

    @property
    def dataset(self):
        ds = getattr(self._local, "ds", None)
        if ds is None or ds.closed:
            try:
                with rasterio.Env(**self.env):
                    ds = rasterio.open(self.path)
            except RasterioError as exc:
                raise InputError(f"cannot open {self.path}: {_first_line(exc)}") from None
            self._local.ds = ds
        return ds

    def read(self, *args, **kwargs) -> np.ndarray:
        """``dataset.read`` under this source's GDAL config; a failed remote read is an InputError."""
        ds = self.dataset
        if not self.env:
            return ds.read(*args, **kwargs)
        try:
            with rasterio.Env(**self.env):
                return ds.read(*args, **kwargs)
        except RasterioError as exc:
            if not self.remote:
                raise
            raise InputError(f"reading {self.path} failed: {_first_line(exc)}") from None

    def hash_content(self, h) -> None:
        """Feed ``h`` the file's size and first and last MiB (over HTTP: two range requests); other
        remote rasters (s3://, gs://..., or a URL only GDAL may read: GDAL_HTTP_HEADERS...) give
        their pixels at a coarse overview instead."""
        if not self.remote:
            size = self.path.stat().st_size
            h.update(str(size).encode())
            with open(self.path, "rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(-(1 << 20), 2)
                    h.update(fh.read())
            return
        url = remote.canonical_url(self.path)
        if remote.is_http(url):
            try:
                parts = remote.http_fingerprint_parts(url)
            except InputError:  # GDAL reads it with headers or a proxy of its own: the pixels then
                parts = None
            if parts is not None:
                for part in parts:
                    h.update(part)
                return
        scale = max(1.0, max(self.width, self.height) / 64)
        shape = (self.count, max(1, round(self.height / scale)), max(1, round(self.width / scale)))
        h.update(b"pixels")
        h.update(self.read(out_shape=shape, resampling=Resampling.nearest).tobytes())


def _first_line(exc: BaseException) -> str:
    """The first line of an error, or of the GDAL error behind it ("Read failed. See previous...")."""
    while "previous exception" in str(exc) and (exc.__cause__ or exc.__context__) is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def collect_raster_paths(
    inputs: Sequence[str | Path], *, asset: str | None = None, expand_stac: bool = True
) -> list[Path | str]:
    """Expand files, folders and STAC documents into a list of rasters: local files as paths, URLs
    and GDAL paths (``/vsi...``) as strings; errors name the bad input. ``asset`` picks the asset
    of STAC Items; ``expand_stac=False`` takes every input as a raster (an index's recorded files)."""
    if not inputs:
        raise InputError("no mosaic given")
    paths: list[Path | str] = []
    stac_seen = False
    for item in inputs:
        s = str(item)
        if remote.is_url(s) or s.startswith("/vsi"):
            if expand_stac and _is_remote_stac(s):
                stac_seen = True
                paths.extend(_stac_rasters(s, asset))
            else:
                paths.append(s)
            continue
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in RASTER_SUFFIXES and q.is_file())
            if not found:
                raise InputError(f"no raster files (.tif/.vrt/...) in folder {p}")
            paths.extend(found)
        elif p.exists() or p.is_symlink():
            from geosearch.fileio import check_regular_file

            check_regular_file(p, "mosaic file")  # FIFO, device, symlink loop: refused before a read
            if expand_stac and _is_local_stac(p):
                stac_seen = True
                paths.extend(_stac_rasters(p, asset))
            else:
                paths.append(p)
        else:
            raise InputError(f"mosaic file not found: {p}")
    if asset is not None and not stac_seen:
        raise InputError("--asset chooses an asset of STAC Items, and no input is a STAC Item")
    return paths


def _is_local_stac(p: Path) -> bool:
    from geosearch.stac import looks_like_stac

    if p.suffix.lower() in RASTER_SUFFIXES:
        return False
    with open(p, "rb") as fh:
        return looks_like_stac(p, fh.read(64))


def _is_remote_stac(url: str) -> bool:
    """A STAC document by its name (``.json``), or, for an http(s) URL with no raster suffix, by
    the content type or first bytes of one small range request."""
    from geosearch.stac import looks_like_stac

    if not remote.is_http(url) or remote.url_suffix(url) in RASTER_SUFFIXES:
        return False
    if looks_like_stac(url):
        return True
    ctype, head = remote.sniff(url)
    return "json" in ctype.lower() or looks_like_stac(url, head)


def _stac_rasters(source: str | Path, asset: str | None) -> list[Path | str]:
    """The image assets of a STAC document: URLs as strings, local files (checked) as paths."""
    from geosearch.fileio import check_regular_file
    from geosearch.stac import asset_hrefs

    out: list[Path | str] = []
    for href in asset_hrefs(source, asset):
        if remote.is_url(href) or href.startswith("/vsi"):
            out.append(href)
            continue
        p = Path(href.removeprefix("file://"))
        check_regular_file(p, f"asset of STAC document {source}")
        out.append(p)
    return out


class Mosaic:
    """Several rasters in one CRS, seen as one surface."""

    def __init__(
        self,
        inputs: Sequence[str | Path],
        *,
        bands: Sequence[int] | None = None,
        stretch: Stretch = "auto",
        stretch_params: list[tuple[float, float]] | None = None,
        percentiles: tuple[float, float] = (2.0, 98.0),
        policy: FilePolicy = OPEN,
        asset: str | None = None,
        expand_stac: bool = True,
    ):
        self.paths = collect_raster_paths(inputs, asset=asset, expand_stac=expand_stac)
        for p in self.paths:
            policy.check_raster(p)
        self.sources = [_Source(p, policy) for p in self.paths]
        first = self.sources[0]
        for src in self.sources[1:]:
            if as_crs(src.crs) != as_crs(first.crs):
                raise InputError(
                    f"mixed CRS in mosaic: {first.name} is {first.crs.to_string()} but "
                    f"{src.name} is {src.crs.to_string()}; reproject them to one CRS first"
                )
            if src.count != first.count:
                raise InputError(
                    f"band counts differ in mosaic: {first.name} has {first.count}, "
                    f"{src.name} has {src.count}"
                )
        self.crs = first.crs
        self.count = first.count
        self.dtype = first.dtype
        self.nodata = first.nodata
        xs0, ys0, xs1, ys1 = zip(*(s.bounds for s in self.sources))
        self.bounds: Bounds = (min(xs0), min(ys0), max(xs1), max(ys1))
        self.res = (
            min(abs(s.transform.a) for s in self.sources),
            min(abs(s.transform.e) for s in self.sources),
        )
        self.pixel_size_m = pixel_size_m(self.crs, Affine(self.res[0], 0, 0, 0, -self.res[1], 0), self.bounds)
        self.bands = self._check_bands(bands)
        self.stretch = stretch
        self.percentiles = percentiles
        self.stats = ReadStats()
        self._stretch_params = stretch_params
        self._segments: OrderedDict = OrderedDict()  # read_many's strips
        self._segments_lock = threading.Lock()

    # -- description ------------------------------------------------------------------------
    def _check_bands(self, bands: Sequence[int] | None) -> tuple[int, int, int]:
        if bands is None:
            bands = (1, 2, 3) if self.count >= 3 else (1, 1, 1)
        bands = tuple(int(b) for b in bands)
        if len(bands) == 1:
            bands = bands * 3
        if len(bands) != 3:
            raise InputError("band selection needs 1 or 3 band numbers (e.g. --bands 4 3 2)")
        bad = [b for b in bands if not 1 <= b <= self.count]
        if bad:
            raise InputError(f"band(s) {bad} out of range: the mosaic has {self.count} band(s)")
        return bands  # type: ignore[return-value]

    @property
    def size_px(self) -> tuple[int, int]:
        return (
            round((self.bounds[2] - self.bounds[0]) / self.res[0]),
            round((self.bounds[3] - self.bounds[1]) / self.res[1]),
        )

    @property
    def bounds_wgs84(self) -> Bounds:
        return reproject_bounds(self.bounds, self.crs, WGS84)

    @property
    def area_km2(self) -> float:
        w, h = self.size_px
        return w * h * self.pixel_size_m[0] * self.pixel_size_m[1] / 1e6

    def fingerprint(self) -> str:
        """Content fingerprint: CRS, grid and a hash of each file's head/tail bytes and size (the
        same for a local file and its copy at an http(s) URL)."""
        h = hashlib.sha256()
        h.update(as_crs(self.crs).to_wkt().encode())
        for src in sorted(self.sources, key=lambda s: s.name):
            h.update(src.name.encode())
            h.update(repr(tuple(src.transform)[:6]).encode())
            h.update(f"{src.width}x{src.height}x{src.count}".encode())
            src.hash_content(h)
        return h.hexdigest()

    def describe(self) -> dict:
        return {
            # absolute: an index opens from anywhere; URLs as given
            "files": [p if isinstance(p, str) else os.path.abspath(p) for p in self.paths],
            "crs": self.crs.to_string(),
            "bounds": list(self.bounds),
            "bounds_wgs84": list(self.bounds_wgs84),
            "band_count": self.count,
            "dtype": self.dtype,
            "rgb_bands": list(self.bands),
            "pixel_size_m": list(self.pixel_size_m),
            "size_px": list(self.size_px),
            "area_km2": round(self.area_km2, 4),
            "stretch": self.stretch,
            "stretch_params": self.stretch_params,
        }

    # -- stretch ----------------------------------------------------------------------------
    @property
    def stretch_params(self) -> list[tuple[float, float]]:
        """Per RGB band (low, high) raw values mapped to 0..255; computed once per mosaic."""
        if self._stretch_params is None:
            self._stretch_params = self._compute_stretch()
        return self._stretch_params

    def _compute_stretch(self) -> list[tuple[float, float]]:
        mode = self.stretch
        if mode == "auto":
            mode = "none" if self.dtype == "uint8" else "percentile"
        if mode == "none":
            return [(0.0, 255.0)] * 3
        w, h = self.size_px
        scale = max(1.0, max(w, h) / 1024)
        img = self._read_raw(
            self.bounds, (max(1, int(h / scale)), max(1, int(w / scale))), count_stats=False, bands=self.bands
        )
        params = []
        for b in range(3):
            vals = img.bands[b][img.mask]
            if vals.size == 0:
                params.append((0.0, 1.0))
                continue
            lo, hi = (
                (np.percentile(vals, self.percentiles)) if mode == "percentile" else (vals.min(), vals.max())
            )
            params.append((float(lo), float(hi if hi > lo else lo + 1)))
        return params

    def to_rgb(self, bands: np.ndarray, mask: np.ndarray) -> np.ndarray:
        out = np.empty(bands.shape[1:] + (3,), np.uint8)
        for i, (lo, hi) in enumerate(self.stretch_params):
            v = (bands[i].astype(np.float32) - lo) * (255.0 / (hi - lo))
            out[..., i] = np.clip(v, 0, 255).astype(np.uint8)
        out[~mask] = 0
        return out

    # -- reading ----------------------------------------------------------------------------
    def read(
        self,
        bounds: Bounds,
        size: int | tuple[int, int],
        *,
        all_bands: bool = False,
        resampling: Resampling = Resampling.bilinear,
    ) -> ImageData:
        """Read ``bounds`` (mosaic CRS) into ``size`` pixels (int = square, or (height, width))."""
        if isinstance(size, int):
            size = (size, size)
        band_list = tuple(range(1, self.count + 1)) if all_bands else self.bands
        raw = self._read_raw(bounds, size, bands=band_list, resampling=resampling)
        rgb_bands = raw.bands if not all_bands else raw.bands[[b - 1 for b in self.bands]]
        raw.rgb = self.to_rgb(rgb_bands, raw.mask)
        return raw

    def read_many(self, windows: Sequence[Bounds], size: int, *, strips: bool = True) -> list[ImageData]:
        """Read windows into ``size`` x ``size`` pixels each (a build's tiles), in order;
        ``strips=False`` reads each alone (windows of no common grid, like region proposals,
        whose strips would be read for one window each).

        A window whose left edge falls on the output pixel grid anchored at the mosaic's origin
        (the tiles of a scale, whose stride is a whole number of output pixels) is cut from a
        *segment*: a strip of that row, ``_SEGMENT_WINDOWS`` windows wide at fixed places, read in
        one call where one source covers it and kept in a small cache. Overlapping tiles are then
        resampled once instead of up to four times, and GDAL is called once per strip (a
        build's reads: 2.9x cheaper on NAIP). GDAL's resampled reads take their kernel's
        neighbours from beyond the window, so the pixels equal window-by-window reads up to
        rounding (on aid-dev, 4 of 12 415 tiles differ by 1 in one pixel), and they do not depend
        on how windows are batched (a Ray shard and a local chunk read the same segments). Other
        windows are read one by one."""
        out: list[ImageData] = []
        for b in windows:
            seg = self._segment_of(b, size) if strips else None
            if seg is None:
                out.append(self.read(b, size))
                continue
            rgb, mask, bands = self._segment(seg, size)
            o = round((b[0] - seg[0]) / ((b[2] - b[0]) / size))
            cols = slice(o, o + size)
            self.stats.add(full_res=seg[5])
            out.append(ImageData(rgb[:, cols], mask[:, cols], bands[:, :, cols], tuple(b), self.crs))  # type: ignore[arg-type]
        return out

    _SEGMENT_WINDOWS = 16  # window starts per segment: 16 window widths (96 px windows: 2.5 MB)
    _SEGMENT_CACHE = 4  # segments kept: a row's current one and its neighbours

    def _segment_of(self, b: Bounds, size: int) -> tuple | None:
        """The segment ``b`` is cut from, (x0, y0, x1, y1, width in pixels, full_res), or None
        to read ``b`` alone."""
        px, py = (b[2] - b[0]) / size, (b[3] - b[1]) / size
        if not (px > 0 and py > 0):
            return None
        col = (b[0] - self.bounds[0]) / px
        if abs(col - round(col)) > 1e-6:
            return None
        src = next((s for s in self.sources if _contains(s.bounds, b)), None)
        if src is None:
            return None
        span = self._SEGMENT_WINDOWS * size
        first = round(col) // span * span
        start = max(first, math.ceil((src.bounds[0] - self.bounds[0]) / px - 1e-6))
        stop = min(first + span - 1 + size, math.floor((src.bounds[2] - self.bounds[0]) / px + 1e-6))
        seg = (self.bounds[0] + start * px, b[1], self.bounds[0] + stop * px, b[3])
        if stop - start <= size or any(s is not src and _overlaps(s.bounds, seg) for s in self.sources):
            return None
        full_res = px <= 1.5 * self.res[0] and py <= 1.5 * self.res[1]
        return (*seg, stop - start, full_res)

    def _segment(self, seg: tuple, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pixels of a segment (rgb, mask, bands), read once: a thread asking for a segment
        that another thread is reading waits for it."""
        key = (seg, size)
        with self._segments_lock:
            pending = self._segments.get(key)
            owner = pending is None
            if owner:
                self._segments[key] = pending = Future()
                while len(self._segments) > self._SEGMENT_CACHE:
                    self._segments.popitem(last=False)
            else:
                self._segments.move_to_end(key)
        if owner:
            try:
                pending.set_result(self._read_segment(seg, size))
            except BaseException as exc:
                with self._segments_lock:
                    self._segments.pop(key, None)
                pending.set_exception(exc)
        return pending.result()

    def _read_segment(self, seg: tuple, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        img = self._read_raw(seg[:4], (size, seg[4]), bands=self.bands, count_stats=False)
        parts = (self.to_rgb(img.bands, img.mask), img.mask, img.bands)
        for a in parts:
            a.flags.writeable = False  # read_many hands out slices of it
        return parts

    def _read_raw(
        self,
        bounds: Bounds,
        size: tuple[int, int],
        *,
        bands: Sequence[int],
        count_stats: bool = True,
        resampling: Resampling = Resampling.bilinear,
    ) -> ImageData:
        h, w = int(size[0]), int(size[1])
        x0, y0, x1, y1 = bounds
        if not (x1 > x0 and y1 > y0) or h < 1 or w < 1:
            raise InputError(f"empty read window {bounds}")
        out = np.zeros((len(bands), h, w), np.float32)
        mask = np.zeros((h, w), bool)
        px_x, px_y = (x1 - x0) / w, (y1 - y0) / h
        if count_stats:
            self.stats.add(full_res=px_x <= 1.5 * self.res[0] and px_y <= 1.5 * self.res[1])
        unique_bands = list(dict.fromkeys(bands))
        for src in self.sources:
            ix0, iy0 = max(x0, src.bounds[0]), max(y0, src.bounds[1])
            ix1, iy1 = min(x1, src.bounds[2]), min(y1, src.bounds[3])
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            c0 = int(round((ix0 - x0) / px_x))
            c1 = int(round((ix1 - x0) / px_x))
            r0 = int(round((y1 - iy1) / px_y))
            r1 = int(round((y1 - iy0) / px_y))
            if c1 <= c0 or r1 <= r0:
                continue
            win = from_bounds(ix0, iy0, ix1, iy1, transform=src.transform)
            data = src.read(
                unique_bands,
                window=win,
                out_shape=(len(unique_bands), r1 - r0, c1 - c0),
                resampling=resampling,
                masked=True,
                boundless=False,
            )
            valid = ~np.ma.getmaskarray(data).any(axis=0)
            if (
                src.nodata is None
                and self.nodata is None
                and src.count >= 4
                and src.dtype == "uint8"
                and src.colorinterp[-1] == "alpha"
            ):
                valid &= src.read(src.count, window=win, out_shape=(r1 - r0, c1 - c0)) > 0
            arr = np.asarray(data.filled(0), np.float32)
            band_pos = {b: i for i, b in enumerate(unique_bands)}
            sel = arr[[band_pos[b] for b in bands]]
            region = (slice(None), slice(r0, r1), slice(c0, c1))
            take = valid & ~mask[r0:r1, c0:c1]
            np.copyto(out[region], sel, where=take)  # a boolean-index copy took 0.66 ms a window
            mask[r0:r1, c0:c1] |= valid
        return ImageData(
            rgb=np.zeros((h, w, 3), np.uint8), mask=mask, bands=out, bounds=(x0, y0, x1, y1), crs=self.crs
        )

    def valid_mask(self, max_side: int = 2048) -> tuple[np.ndarray, Affine]:
        """A coarse validity mask of the whole mosaic (for skipping all-nodata tiles)."""
        w, h = self.size_px
        scale = max(1.0, max(w, h) / max_side)
        mh, mw = max(1, int(np.ceil(h / scale))), max(1, int(np.ceil(w / scale)))
        img = self._read_raw(
            self.bounds, (mh, mw), bands=(self.bands[0],), count_stats=False, resampling=Resampling.nearest
        )
        x0, y0, x1, y1 = self.bounds
        return img.mask, Affine((x1 - x0) / mw, 0, x0, 0, -(y1 - y0) / mh, y1)

    # -- coordinates ------------------------------------------------------------------------
    def pixel_to_map(self, col: float, row: float) -> tuple[float, float]:
        return (self.bounds[0] + col * self.res[0], self.bounds[3] - row * self.res[1])

    def map_to_pixel(self, x: float, y: float) -> tuple[float, float]:
        return ((x - self.bounds[0]) / self.res[0], (self.bounds[3] - y) / self.res[1])

    def map_to_wgs84(self, x, y):
        return transformer(self.crs, WGS84).transform(x, y)

    def wgs84_to_map(self, lon, lat):
        return transformer(WGS84, self.crs).transform(lon, lat)


def _overlaps(a: Bounds, b: Bounds) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _contains(outer: Bounds, inner: Bounds) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def open_mosaic(inputs: Sequence[str | Path] | str | Path, **kwargs) -> Mosaic:
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    return Mosaic(list(inputs), **kwargs)
