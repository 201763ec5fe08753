"""Synthetic-document (SDF) organisms: implant a false belief from generated documents and measure its depth."""
