"""The detectors, one module per attack class."""
