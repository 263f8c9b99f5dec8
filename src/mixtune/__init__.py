"""mixtune: compose SFT data, train with multi-stage strategies, measure every ability."""

__version__ = "0.1.0"
