"""Backends: NIR files, the reference simulator (importable as ``spikec.backends``)."""
