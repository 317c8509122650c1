"""GeoSearch front ends: the CLI, the MCP server and the LangGraph planner."""
