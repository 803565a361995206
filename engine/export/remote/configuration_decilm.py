"""DeciLM (Nemotron-NAS) config for a SlimLab export: a LlamaConfig plus ``block_configs``, one per layer.

vLLM's ``DeciLMForCausalLM`` (``vllm/model_executor/models/nemotron_nas.py``) reads each block by
attribute: ``attention.no_op``, ``attention.n_heads_in_group`` (query heads per KV head),
``ffn.no_op`` and, when the FFN section has no ``ffn_mult`` attribute at all, the explicit
``ffn.intermediate_size``. NVIDIA's own block dataclasses always carry ``ffn_mult`` (rounded to a
multiple of 256), so this config keeps each section to exactly the keys written: an explicit
width is then what vLLM builds. transformers has no ``nemotron-nas`` config, hence this file
(``vllm serve FOLDER --trust-remote-code``). Imports only transformers.
"""
from transformers import LlamaConfig


class BlockSection:
    """One section (``attention`` or ``ffn``) of a block: its keys as attributes, nothing more."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class BlockConfig:
    """A layer's attention and FFN settings."""

    def __init__(self, attention: dict, ffn: dict):
        self.attention = attention if isinstance(attention, BlockSection) else BlockSection(**attention)
        self.ffn = ffn if isinstance(ffn, BlockSection) else BlockSection(**ffn)

    def to_dict(self) -> dict:
        return {"attention": self.attention.to_dict(), "ffn": self.ffn.to_dict()}


class DeciLMConfig(LlamaConfig):
    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, **kwargs):
        super().__init__(**kwargs)
        self.block_configs = [b if isinstance(b, BlockConfig) else BlockConfig(**b) for b in block_configs or []]

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["block_configs"] = [b.to_dict() for b in self.block_configs]
        return out
