"""GeoSearch: text-to-region retrieval in Earth-observation mosaics."""

__version__ = "0.1.0"
