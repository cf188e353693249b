"""Rewrite passes over canonical spikec GraphModules (importable as ``spikec.passes``).

Importing this package registers the built-in passes with ``spikec.core.passes``.
"""

from . import calibrate, encode, fold, outliers  # noqa: F401  (registration side effects)

DEFAULT_PIPELINE: list[str] = ["fold-norm-affine", "calibrate", "burst-all", "spike-encode"]
"""The passes ``spikec compile`` runs by default, in order."""

__all__ = ["DEFAULT_PIPELINE"]
