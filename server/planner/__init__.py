"""The LLM planner (LangGraph's prebuilt tool-calling pattern): a chat model drives the step-by-step
tools of :mod:`geosearch_tools.registry` (``state.py`` / ``tools.py`` / ``graph.py``, after the LangGraph
react-agent template), and whatever regions it picks pass through the answering chain's last stages
(:func:`geosearch.chain.finish`: relations, calibration / abstention with near-misses, explanation).

The deterministic answer is not planned here: ``geosearch ask`` and the MCP ``answer`` tool call
the engine's one chain (:func:`geosearch.chain.answer`) directly.
"""

from geosearch_server.planner.graph import build_graph, run_llm_planner
from geosearch_server.planner.tools import langchain_tools

__all__ = ["build_graph", "langchain_tools", "run_llm_planner"]
