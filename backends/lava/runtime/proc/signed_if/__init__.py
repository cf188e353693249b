"""The ``SignedIF`` process: signed, graded, soft-reset integrate-and-fire neurons."""
