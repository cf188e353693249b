"""The ground floor of spikec: neuron dynamics, canonical operators, NIR extension
nodes and the pass registry. Nothing here imports another part of the project, so
passes and backends share one definition of every neuron and operator."""
