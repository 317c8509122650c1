"""Regions, not tiles: coarse-to-fine pyramid, heatmap segmentation, merging, reranking,
calibration and abstention. Engine functions only (no MCP imports); methods are registered by
:mod:`geosearch.refine.methods`."""

from geosearch.refine.heatmap import Candidate, segment, similarity_heatmap
from geosearch.refine.merge import merge_candidates
from geosearch.refine.pyramid import PyramidResult, Window, dense_window_count, pyramid_search, zoom
from geosearch.refine.rerank import RerankWeights, negative_prompts, rerank

__all__ = [
    "Candidate",
    "PyramidResult",
    "RerankWeights",
    "Window",
    "dense_window_count",
    "merge_candidates",
    "negative_prompts",
    "pyramid_search",
    "rerank",
    "segment",
    "similarity_heatmap",
    "zoom",
]
