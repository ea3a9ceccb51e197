"""lastmile: streaming last-mile drift and disparity monitoring for ML services."""

__version__ = "0.1.0"
