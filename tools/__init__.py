"""MCP tools over the GeoSearch engine: one module per tool, plain functions with pydantic I/O."""
