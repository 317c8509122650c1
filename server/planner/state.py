"""State of the LLM planner graph: the message list (LangGraph's ``MessagesState``)."""

from __future__ import annotations

from langgraph.graph import MessagesState


class PlannerState(MessagesState):
    """Messages only: what the model asked, what the tools answered."""
