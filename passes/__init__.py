"""Rewrite passes over canonical spikec GraphModules (importable as ``spikec.passes``)."""
