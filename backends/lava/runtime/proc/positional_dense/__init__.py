"""The ``PositionalDense`` process: Lava's Dense applied to every position, graded spikes."""
