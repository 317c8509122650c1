"""Tool ``explain``: why were these regions returned? Score per prompt, relation results,
calibration, evidence tiles with previews and a short explanation (template
``prompts/explanation.md``; written by an LLM when one is available)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from geosearch.errors import GeoSearchError
from geosearch.geo import WGS84, reproject_bounds
from geosearch.query import parse_query, query_from_prompts
from geosearch.refine.common import query_vector
from geosearch_tools.check_relation import RelationOut
from geosearch_tools.common import ProgressFn, Prompts, QueryText, RegionIn, StrictInput, Workspace, report
from geosearch_tools.zoom_tile import Preview, preview_for


class ExplainInput(StrictInput):
    index: str = Field(min_length=1, max_length=1000)
    regions: list[RegionIn] = Field(min_length=1, max_length=20)
    query: QueryText = Field(min_length=1)
    prompts: Prompts | None = Field(None, description="prompts to score (default: parsed from the query)")
    check_relations: bool = Field(
        True, description="evaluate the relations named in the query (when layers exist)"
    )
    previews: int = Field(3, ge=0, le=10, description="attach PNG previews for this many regions")
    use_llm: bool = True


class EvidenceTile(BaseModel):
    id: str
    score: float | None = None
    bbox: list[float] | None = None


class RegionExplanation(BaseModel):
    id: str
    score: float = Field(description="cosine similarity of the region window with the prompt ensemble")
    prompt_scores: dict[str, float]
    negative_scores: dict[str, float] = Field(default_factory=dict)
    z_index: float = Field(description="score in standard deviations above this index's tile scores")
    confidence: float | None = None
    calibration: dict[str, Any] = Field(default_factory=dict)
    relations: list[RelationOut] = Field(default_factory=list)
    evidence_tiles: list[EvidenceTile] = Field(default_factory=list)
    preview: Preview | None = None


class ExplainOutput(BaseModel):
    index: str
    query: str
    prompts: list[str]
    regions: list[RegionExplanation]
    relations_unchecked: list[str] = Field(default_factory=list)
    calibrated: bool = False
    explanation: str
    explanation_source: str = "template"


def _calibrations(idx, vec: np.ndarray, emb: np.ndarray) -> tuple[list[tuple[float, dict]], bool]:
    """Confidence and calibration features of each region from its own-extent embedding, the same
    way the answering chain calibrates (with a gallery: ``d_ref``, ``g_agree``, ``g_above`` and
    ``g_image``, of which the fitted calibration reads its own)."""
    from geosearch.refine import calibrate

    params = calibrate.load_calibration(idx.meta.get("model_name"))
    own = emb @ vec
    order = np.argsort(-own, kind="stable")
    confs, top_feats = calibrate.region_confidences(
        idx, vec, [(float(own[i]), None) for i in order], params, embeddings=emb[order]
    )
    out: list[tuple[float, dict]] = [(0.0, {})] * len(own)
    for rank, (i, conf) in enumerate(zip(order, confs)):
        # the query-level features are the top region's; the region-level ones are its own
        feats = (
            top_feats if rank == 0 else {**top_feats, **calibrate.features_for(idx, vec, float(own[i]), None)}
        )
        out[int(i)] = (
            float(conf),
            {k: round(float(v), 4) for k, v in feats.items()}
            | {"threshold": float(params.get("threshold", 0.5))},
        )
    return out, bool(params.get("calibrated", False))


def run(inp: ExplainInput, ws: Workspace, progress: ProgressFn | None = None) -> ExplainOutput:
    from geosearch.refine.common import embed_windows
    from geosearch.relations.apply import apply_relations, layers_connection

    parsed = parse_query(inp.query)
    pq = query_from_prompts(inp.prompts, parsed.negative_prompts, inp.query) if inp.prompts else parsed
    pos, neg = pq.positive_prompts, pq.negative_prompts
    geoms = [(r.id, r.geometry()) for r in inp.regions]
    total = len(geoms) + 2
    report(progress, 0, total, "scoring regions")
    unchecked: list[str] = []
    with ws.using(inp.index) as h:
        idx = h.index
        model = idx.model()
        pvecs = model.encode_text(pos)
        nvecs = model.encode_text(neg) if neg else np.zeros((0, pvecs.shape[1]), np.float32)
        vec = query_vector(idx, pos, neg)
        all_s = idx.embeddings @ vec
        mean, std = float(all_s.mean()), float(all_s.std() + 1e-6)
        mb = idx.mosaic_bounds
        bounds_list = []
        for rid, g in geoms:
            b = reproject_bounds(g.bounds, WGS84, idx.crs)
            b = (max(b[0], mb[0]), max(b[1], mb[1]), min(b[2], mb[2]), min(b[3], mb[3]))
            if not (b[2] > b[0] and b[3] > b[1]):
                raise GeoSearchError(f"region {rid!r} lies outside the indexed mosaic")
            bounds_list.append(b)
        emb, _ = embed_windows(idx, bounds_list)
        rel_results: dict[str, list[RelationOut]] = {rid: [] for rid, _ in geoms}
        if inp.check_relations and parsed.relations:
            with layers_connection(h.path) as con:
                rep = apply_relations(con, geoms, parsed.relations, parsed.time)
            unchecked += rep.unchecked
            for rid, checks in rep.results.items():
                rel_results[rid] = [RelationOut.from_engine(d) for d in checks]
        report(progress, 1, total, "calibrating")
        out: list[RegionExplanation] = []
        cals, calibrated = _calibrations(idx, vec, emb)
        for i, ((rid, _g), region) in enumerate(zip(geoms, inp.regions)):
            e = emb[i]
            score = float(e @ vec)
            conf, cal = cals[i]
            evidence = []
            for tid in region.evidence_tiles[:5]:
                try:
                    j = idx.position(tid)
                except GeoSearchError:
                    continue
                evidence.append(
                    EvidenceTile(id=tid, score=float(all_s[j]), bbox=list(idx.polygons_wgs84()[j].bounds))
                )
            prev = None
            if i < inp.previews:
                prev = preview_for(ws, h, bounds_list[i], tag=f"explain-{rid}")
            out.append(
                RegionExplanation(
                    id=rid,
                    score=score,
                    prompt_scores={p: float(e @ v) for p, v in zip(pos, pvecs)},
                    negative_scores={p: float(e @ v) for p, v in zip(neg, nvecs)},
                    z_index=(score - mean) / std,
                    confidence=conf,
                    calibration=cal,
                    relations=rel_results[rid],
                    evidence_tiles=evidence,
                    preview=prev,
                )
            )
            report(progress, i + 2, total, f"region {rid}")
    text, source = _explanation(ws, inp, pq, out, unchecked, calibrated)
    report(progress, total, total, "done")
    return ExplainOutput(
        index=h.name,
        query=inp.query,
        prompts=pos,
        regions=out,
        relations_unchecked=unchecked,
        calibrated=calibrated,
        explanation=text,
        explanation_source=source,
    )


def _explanation(
    ws: Workspace,
    inp: ExplainInput,
    pq,
    regions: list[RegionExplanation],
    unchecked: list[str],
    calibrated: bool,
) -> tuple[str, str]:
    best = max(regions, key=lambda r: r.score)
    top_prompt = max(best.prompt_scores, key=best.prompt_scores.get) if best.prompt_scores else ""
    lines = [
        f'{len(regions)} region(s) examined for "{inp.query}". The best, {best.id}, scores '
        f"{best.score:.3f}, {best.z_index:+.1f} SD against all tiles of the index; it matches "
        f'"{top_prompt}" most.'
    ]
    if best.confidence is not None:
        lines.append(
            f"Its confidence is {best.confidence:.2f} ({'calibrated' if calibrated else 'uncalibrated'}"
            f"{', above' if best.confidence >= best.calibration.get('threshold', 0.5) else ', below'} "
            f"the abstention threshold {best.calibration.get('threshold', 0.5):.2f})."
        )
    rel = [r for reg in regions for r in reg.relations]
    if rel:
        held = sum(r.satisfied for r in rel)
        lines.append(
            f"Spatial checks: {held} of {len(rel)} hold "
            + "; ".join(
                f"{r.region_id} {'not ' if r.negated else ''}{r.predicate} {r.layer}: "
                f"{'yes' if r.satisfied else 'no'}"
                + (f" ({r.value:.0f} {r.unit})" if r.value is not None else "")
                for r in rel[:4]
            )
            + "."
        )
    if unchecked:
        lines.append("Not checked: " + "; ".join(unchecked[:3]) + ".")
    if pq.negative_prompts:
        lines.append(
            "Regions looking like " + ", ".join(f'"{e}"' for e in pq.exclusions[:3]) + " were pushed down."
        )
    lines.append("Check the previews by eye: scores rank places, they do not prove the object is there.")
    summary = " ".join(lines)
    complete = ws.llm_complete() if inp.use_llm else None
    if complete is None:
        return summary, "template"
    from geosearch_prompts import render

    scores = "\n".join(
        f"- {r.id}: overall {r.score:.3f} (z {r.z_index:+.1f}); "
        + ", ".join(f"'{p}' {s:.3f}" for p, s in list(r.prompt_scores.items())[:3])
        for r in regions
    )
    relations = (
        "\n".join(
            f"- {r.region_id} {'not ' if r.negated else ''}{r.predicate} {r.layer}: {r.satisfied} "
            f"({r.value} {r.unit})"
            for r in rel
        )
        or "- none"
    )
    calib = (
        ", ".join(f"{r.id}: {r.confidence:.2f}" for r in regions if r.confidence is not None)
        or "not available"
    )
    evidence = ", ".join(t.id for r in regions for t in r.evidence_tiles) or "none"
    try:
        text = complete(
            render(
                "explanation",
                query=inp.query,
                summary=summary,
                scores=scores,
                relations=relations,
                calibration=calib,
                evidence=evidence,
            )
        ).strip()
        if text:
            return text, "llm"
    except Exception:  # noqa: BLE001 - the template explanation stands
        pass
    return summary, "template"
