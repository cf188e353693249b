"""Analyses of a compiled spiking network (not backends: nothing here runs a network).

``counts`` (operation and spike counts of a NIR graph against its ANN, from what the
reference simulator measured; the attention cores' rules in ``attention_counts``, the
records in ``operations``), ``energy_models`` (picojoules per operation), ``estimate``
(ANN against SNN energy per token), ``formatting`` (the text table), ``summary`` (what
``spikec inspect`` prints) and ``spiking_parts`` (which parts of a network spike, for
report.json). Stands on ``spikec.core`` and ``spikec.backends``; backends never import it.
"""
