"""Configuration of LSG-BART: BART with Local + Sparse + Global attention in the encoder."""

import typing
from typing import Optional

from .compat import ConfigBase, config_class

SPARSITY_TYPES = ("none", "norm", "pooling", "lsh", "stride", "block_stride", "bos_pooling")
# The attention kernels (lsg_kernels.KERNELS), or "auto" to let the model choose per call.
LSG_KERNELS = ("auto", "reference", "flex", "eager", "sdpa", "cpu_two_part", "cpu_bf16_scores")
MAX_GLOBAL_TOKENS = 512

# transformers 5 has no "summarization" pipeline of its own; checkpoints declare this one (used on 4.x too).
CUSTOM_PIPELINES = {
    "summarization": {
        "impl": "modeling_lsg_bart.LSGBartSummarizationPipeline",
        "pt": ["AutoModelForSeq2SeqLM"],
        "tf": [],
        "type": "text",
    }
}

AUTO_MAP = {
    "AutoConfig": "configuration_lsg_bart.LSGBartConfig",
    "AutoModel": "modeling_lsg_bart.LSGBartModel",
    "AutoModelForCausalLM": "modeling_lsg_bart.LSGBartForCausalLM",
    "AutoModelForQuestionAnswering": "modeling_lsg_bart.LSGBartForQuestionAnswering",
    "AutoModelForSeq2SeqLM": "modeling_lsg_bart.LSGBartForConditionalGeneration",
    "AutoModelForSequenceClassification": "modeling_lsg_bart.LSGBartForSequenceClassification",
}


@config_class
class LSGBartConfig(ConfigBase):
    r"""
    Configuration of an LSG-BART model: a [`BartConfig`] whose encoder self-attention is LSG attention.

    Each encoder query block of `block_size` tokens attends to `num_global_tokens` learned global tokens, to its own
    block and its two neighbours (local), and to `sparse_block_size` compressed tokens on each side of that local
    window (sparse). Sequences of `2 * block_size` tokens or fewer use full attention.

    Args:
        adaptive (`bool`, defaults to `True`):
            Pad the input on the right to a multiple of `block_size` when needed. When `False`, inputs longer than
            `2 * block_size` whose length is not a multiple of `block_size` are rejected.
        block_size (`int`, defaults to 128):
            Size of the local attention blocks.
        sparse_block_size (`int`, defaults to 128):
            Number of compressed tokens each block sees on each side of its local window; 0 disables sparse attention.
        sparsity_factor (`int`, defaults to 2):
            Compression factor of the sparse tokens; must divide `block_size`.
        sparsity_type (`str`, defaults to `"norm"`):
            How sparse tokens are chosen: one of `"none"`, `"norm"`, `"pooling"`, `"lsh"`, `"stride"`,
            `"block_stride"`, `"bos_pooling"`.
        num_global_tokens (`int`, defaults to 1):
            Number of learned global tokens prepended to the sequence, 1 to 512.
        mask_first_token (`bool`, defaults to `False`):
            Mask the first real token (it is redundant with global token 0).
        pass_global_tokens_to_decoder (`bool`, defaults to `True`):
            Keep the global tokens in the encoder output that the decoder attends to.
        pool_with_global (`bool`, defaults to `True`):
            When the global tokens are dropped, write global token 0's state over the first real token.
        lsh_num_pre_rounds (`int`, defaults to 1):
            Number of LSH rounds that merge tokens before the final round (`"lsh"` only).
        lsg_kernel (`str`, defaults to `"auto"`):
            The attention kernel: `"auto"` chooses per call from the device, dtype, training and dropout (see
            `lsg_kernels.choose_kernel`); or one of `"reference"`, `"flex"`, `"eager"`, `"sdpa"`, `"cpu_two_part"`,
            `"cpu_bf16_scores"`. Every kernel computes the same attention.
        lsh_seed (`int`, *optional*):
            Seed of the LSH random projections. When set, every forward pass draws the same projections, so `"lsh"`
            outputs are reproducible; when `None`, they are drawn from torch's global generator.

    Example:

    ```python
    >>> from lsg_bart import LSGBartConfig, LSGBartForConditionalGeneration
    >>> config = LSGBartConfig(max_position_embeddings=4096, block_size=128, sparsity_type="norm")
    >>> model = LSGBartForConditionalGeneration(config)
    ```
    """

    model_type = "lsg_bart"

    adaptive: bool = True
    block_size: int = 128
    sparse_block_size: int = 128
    sparsity_factor: int = 2
    sparsity_type: str = "norm"
    num_global_tokens: int = 1
    mask_first_token: bool = False
    pass_global_tokens_to_decoder: bool = True
    pool_with_global: bool = True
    lsh_num_pre_rounds: int = 1
    lsh_seed: Optional[int] = None
    lsg_kernel: str = "auto"

    def __post_init__(self, **kwargs):
        # Legacy checkpoints (model_type "bart") carry the original package's prefix and auto_map; this class replaces both.
        kwargs.pop("base_model_prefix", None)
        kwargs.pop("model_type", None)
        self.auto_map = dict(AUTO_MAP)
        self.custom_pipelines = dict(CUSTOM_PIPELINES)
        self.check_lsg_settings()
        super().__post_init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """[`PretrainedConfig.from_dict`] (what `from_pretrained` uses), with the LSG settings checked together once
        the keyword arguments are applied."""
        result = super().from_dict(config_dict, **kwargs)
        (result[0] if isinstance(result, tuple) else result).check_lsg_settings()
        return result

    def _validated_setattr(self, name, value, assign):
        """`assign(self, name, value)`, for LSG fields only once the value is checked. However a field is set (the
        constructor, `from_pretrained(**kwargs)`, `config.block_size = 64` after loading), a value that is invalid
        on its own (type, range, name) raises `ValueError` naming the field, and the config keeps its previous value.
        Settings that must agree with each other are checked together (`check_lsg_settings`) when the config is
        built, when a model is built from it, and at every encoder forward pass: fields set one by one may pass
        through a combination that is invalid until the last of them is set."""
        if name in LSG_FIELDS:
            check_type(name, value)
            problem = FIELD_CHECKS.get(name, lambda value: None)(value)
            if problem:
                raise ValueError(f"LSGBartConfig: invalid `{name}`={value!r}; {problem}.")
        return assign(self, name, value)

    def check_lsg_settings(self):
        """`ValueError` naming the field, its value and what is allowed, for settings that do not fit together
        (and for any field that is invalid on its own)."""

        def fail(field, allowed):
            raise ValueError(f"LSGBartConfig: invalid `{field}`={getattr(self, field)!r}; {allowed}.")

        for field in LSG_FIELDS:
            check_type(field, getattr(self, field))
            problem = FIELD_CHECKS.get(field, lambda value: None)(getattr(self, field))
            if problem:
                fail(field, problem)
        if self.block_size % self.sparsity_factor != 0:
            fail("sparsity_factor", f"it must divide block_size={self.block_size}")
        if self.sparsity_type in ("norm", "lsh") and self.sparse_block_size > 0:
            chunk = min(self.block_size, self.sparse_block_size)
            if self.block_size % chunk != 0 or chunk % self.sparsity_factor != 0:
                fail(
                    "sparse_block_size",
                    f"with sparsity_type={self.sparsity_type!r}, min(block_size, sparse_block_size) must divide "
                    f"block_size={self.block_size} and be a multiple of sparsity_factor={self.sparsity_factor}",
                )
        positions = getattr(self, "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 2 * self.block_size and positions % self.block_size:
            # Inputs are padded to a multiple of block_size: the longest ones would not fit.
            fail(
                "block_size",
                f"it must divide max_position_embeddings={positions} (the nearest valid values are "
                f"{' and '.join(map(str, nearest_block_sizes(positions, self.block_size, self.sparsity_factor)))})",
            )


def one_of(choices):
    return lambda value: None if value in choices else f"expected one of {', '.join(choices)}"


def at_least(lowest, allowed):
    return lambda value: None if value >= lowest else allowed


# What each LSG field allows on its own (None when `value` is fine); `check_lsg_settings` adds how they must agree.
FIELD_CHECKS = {
    "sparsity_type": one_of(SPARSITY_TYPES),
    "lsg_kernel": one_of(LSG_KERNELS),
    "block_size": at_least(1, "expected a positive integer"),
    "sparse_block_size": at_least(0, "expected 0 (no sparse attention) or a positive integer"),
    "sparsity_factor": at_least(1, "expected a positive integer"),
    "num_global_tokens": lambda value: (
        None if 1 <= value <= MAX_GLOBAL_TOKENS else f"expected an integer from 1 to {MAX_GLOBAL_TOKENS}"
    ),
    "lsh_num_pre_rounds": at_least(0, "expected 0 or a positive integer"),
}


def check_type(field, value):
    """`ValueError` unless `value` has the type of LSG field `field` (an int is no bool here)."""
    kinds = LSG_FIELDS[field]
    if not any(value is None if kind is type(None) else is_exactly(value, kind) for kind in kinds):
        expected = " or ".join(KIND_NAMES[kind] for kind in kinds)
        raise ValueError(f"LSGBartConfig: invalid `{field}`={value!r}; expected {expected}.")


def is_exactly(value, kind):
    return isinstance(value, kind) and isinstance(value, bool) == (kind is bool)


def nearest_block_sizes(positions, block_size, factor):
    """The block sizes that divide `positions` and are multiples of `factor` just below and above `block_size`."""
    valid = [size for size in range(factor, positions + 1, factor) if positions % size == 0]
    below = [size for size in valid if size < block_size][-1:]
    above = [size for size in valid if size > block_size][:1]
    return below + above


# The LSG fields and the types each accepts, e.g. "lsh_seed": (int, NoneType).
LSG_FIELDS = {name: typing.get_args(kind) or (kind,) for name, kind in LSGBartConfig.__annotations__.items()}
KIND_NAMES = {bool: "true or false", int: "an integer", str: "a string", type(None): "None"}


__all__ = ["LSGBartConfig", "SPARSITY_TYPES"]
