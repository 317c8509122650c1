"""Training and evaluation of the starter text-image model (``geosearch train``)."""
