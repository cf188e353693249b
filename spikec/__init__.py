"""spikec: compile transformer language models into spiking neural networks."""
