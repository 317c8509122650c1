"""Relations and geo-constraints on vector layers (DuckDB spatial)."""
