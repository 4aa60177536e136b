"""Configuration of LSG-BART: BART with Local + Sparse + Global attention in the encoder."""

from typing import Optional

from .compat import ConfigBase, config_class
from .lsg_settings import (
    LSG_DEFAULTS,
    LSG_FIELDS,
    LSG_KERNELS,
    MAX_GLOBAL_TOKENS,
    SPARSITY_TYPES,
    check_field,
    check_lsg_settings,
    positions_problem,
)

# transformers 5 has no "summarization" pipeline of its own; checkpoints declare this one (used on 4.x too).
CUSTOM_PIPELINES = {
    "summarization": {
        "impl": "pipeline_lsg_bart.LSGBartSummarizationPipeline",
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
            Size of the local attention blocks, at most `max_position_embeddings`.
        sparse_block_size (`int`, defaults to 128):
            Number of compressed tokens each block sees on each side of its local window, at most
            `max_position_embeddings`; 0 disables sparse attention.
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
            Number of LSH rounds that merge tokens before the final round (`"lsh"` only), 0 to 16.
        lsg_kernel (`str`, defaults to `"auto"`):
            The attention kernel: `"auto"` chooses one per forward pass from the device, dtype, training and
            dropout (see `lsg_kernels.choose_kernel`); or one of `"reference"`, `"flex"`, `"eager"`, `"sdpa"`,
            `"cpu_two_part"`, `"cpu_bf16_scores"`. Every kernel computes the same attention.
        lsh_seed (`int`, *optional*):
            Seed of the LSH random projections, 0 to 2**63 - 1. When set, every forward pass draws the same projections, so `"lsh"`
            outputs are reproducible; when `None`, they are drawn from torch's global generator.

    Example:

    ```python
    >>> from lsg_bart import LSGBartConfig, LSGBartForConditionalGeneration
    >>> config = LSGBartConfig(max_position_embeddings=4096, block_size=128, sparsity_type="norm")
    >>> model = LSGBartForConditionalGeneration(config)
    ```
    """

    model_type = "lsg_bart"

    adaptive: bool = LSG_DEFAULTS["adaptive"]
    block_size: int = LSG_DEFAULTS["block_size"]
    sparse_block_size: int = LSG_DEFAULTS["sparse_block_size"]
    sparsity_factor: int = LSG_DEFAULTS["sparsity_factor"]
    sparsity_type: str = LSG_DEFAULTS["sparsity_type"]
    num_global_tokens: int = LSG_DEFAULTS["num_global_tokens"]
    mask_first_token: bool = LSG_DEFAULTS["mask_first_token"]
    pass_global_tokens_to_decoder: bool = LSG_DEFAULTS["pass_global_tokens_to_decoder"]
    pool_with_global: bool = LSG_DEFAULTS["pool_with_global"]
    lsh_num_pre_rounds: int = LSG_DEFAULTS["lsh_num_pre_rounds"]
    lsh_seed: Optional[int] = LSG_DEFAULTS["lsh_seed"]
    lsg_kernel: str = LSG_DEFAULTS["lsg_kernel"]

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
        on its own (type, range, name) or larger than the model's `max_position_embeddings` (a block size) raises
        `ValueError` naming the field, and the config keeps its previous value.
        Settings that must agree with each other are checked together (`check_lsg_settings`) when the config is
        built, when a model is built from it, and at every encoder forward pass: fields set one by one may pass
        through a combination that is invalid until the last of them is set."""
        if name in LSG_FIELDS:
            check_field(name, value)
            problem = positions_problem(name, value, self.__dict__.get("max_position_embeddings"))
            if problem:
                raise ValueError(f"LSGBartConfig: invalid `{name}`={value!r}; {problem}.")
        return assign(self, name, value)

    def check_lsg_settings(self):
        """`ValueError` naming the field, its value and what is allowed, for settings that do not fit together
        (and for any field that is invalid on its own)."""
        settings = {field: getattr(self, field) for field in LSG_FIELDS}
        check_lsg_settings(settings, getattr(self, "max_position_embeddings", None))


__all__ = ["LSG_KERNELS", "MAX_GLOBAL_TOKENS", "SPARSITY_TYPES", "LSGBartConfig"]
