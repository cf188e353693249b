"""spikec's NIR extension nodes: plain dataclasses of fields, no behaviour inside, no torch.

``base``: the ``SpikecNode`` base, ``is_spiking``, ``is_extension``; ``real``: real-valued
operators; ``rate``: the rate-code neuron and readout; ``ssa``: spiking self-attention;
``streaming``: the spike-softmax network and token encoding; ``few_spike``: the few-spike
(binary) neuron and its Horner readout. ``EXTENSION_TYPES`` maps each
node's HDF5 ``type`` (its class name) to its class, for reading NIR files.
"""

from .base import STANDARD_SPIKING_TYPES, SpikecNode, is_extension, is_spiking
from .few_spike import SpikecBinaryReadout, SpikecFewSpike
from .rate import SpikecRateReadout, SpikecSignedIF
from .real import (
    SpikecActivation,
    SpikecAdd,
    SpikecAttention,
    SpikecEmbedding,
    SpikecGatedActivation,
    SpikecLayerNorm,
    SpikecRMSNorm,
)
from .ssa import SpikecSSA
from .streaming import (
    STREAMING_NEURONS,
    STREAMING_TYPES,
    SpikecSpikeAttention,
    SpikecSpikeDecode,
    SpikecSTBIF,
    SpikecStreamActivation,
    SpikecStreamAdd,
    SpikecStreamGatedActivation,
    SpikecStreamLayerNorm,
    SpikecStreamRMSNorm,
    SpikecTokenEncoder,
)

EXTENSION_TYPES: dict[str, type[SpikecNode]] = {
    "SpikecEmbedding": SpikecEmbedding,
    "SpikecLayerNorm": SpikecLayerNorm,
    "SpikecRMSNorm": SpikecRMSNorm,
    "SpikecAttention": SpikecAttention,
    "SpikecActivation": SpikecActivation,
    "SpikecGatedActivation": SpikecGatedActivation,
    "SpikecAdd": SpikecAdd,
    "SpikecSignedIF": SpikecSignedIF,
    "SpikecRateReadout": SpikecRateReadout,
    "SpikecSSA": SpikecSSA,
    "SpikecSTBIF": SpikecSTBIF,
    "SpikecStreamLayerNorm": SpikecStreamLayerNorm,
    "SpikecStreamRMSNorm": SpikecStreamRMSNorm,
    "SpikecStreamActivation": SpikecStreamActivation,
    "SpikecStreamGatedActivation": SpikecStreamGatedActivation,
    "SpikecStreamAdd": SpikecStreamAdd,
    "SpikecSpikeAttention": SpikecSpikeAttention,
    "SpikecTokenEncoder": SpikecTokenEncoder,
    "SpikecSpikeDecode": SpikecSpikeDecode,
    "SpikecFewSpike": SpikecFewSpike,
    "SpikecBinaryReadout": SpikecBinaryReadout,
}
"""HDF5 type name (the class name) -> class, for every extension node."""

__all__ = [
    "EXTENSION_TYPES",
    "STANDARD_SPIKING_TYPES",
    "STREAMING_NEURONS",
    "STREAMING_TYPES",
    "SpikecActivation",
    "SpikecAdd",
    "SpikecAttention",
    "SpikecBinaryReadout",
    "SpikecEmbedding",
    "SpikecFewSpike",
    "SpikecGatedActivation",
    "SpikecLayerNorm",
    "SpikecNode",
    "SpikecRMSNorm",
    "SpikecRateReadout",
    "SpikecSSA",
    "SpikecSTBIF",
    "SpikecSignedIF",
    "SpikecSpikeAttention",
    "SpikecSpikeDecode",
    "SpikecStreamActivation",
    "SpikecStreamAdd",
    "SpikecStreamGatedActivation",
    "SpikecStreamLayerNorm",
    "SpikecStreamRMSNorm",
    "SpikecTokenEncoder",
    "is_extension",
    "is_spiking",
]
