"""Public datasets the examples use. Nothing here ships data: it downloads it or reads a local copy."""
