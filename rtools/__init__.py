"""rtools: refusal tokens made practical (Jain et al., arXiv 2412.06748)."""

__version__ = "0.1.0"
