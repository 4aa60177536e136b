"""LSG-BART: BART with Local + Sparse + Global attention for long inputs, on transformers 5."""

from .configuration_lsg_bart import SPARSITY_TYPES, LSGBartConfig
from .modeling_lsg_bart import (
    LSGBartForCausalLM,
    LSGBartForConditionalGeneration,
    LSGBartForQuestionAnswering,
    LSGBartForSequenceClassification,
    LSGBartModel,
    LSGBartPreTrainedModel,
)

__version__ = "0.1.0"

# The remote-code files: what a checkpoint folder carries so that it loads with `trust_remote_code=True`.
REMOTE_CODE_FILES = ("configuration_lsg_bart.py", "modeling_lsg_bart.py", "transformers_compat.py")

__all__ = [
    "REMOTE_CODE_FILES",
    "SPARSITY_TYPES",
    "LSGBartConfig",
    "LSGBartForCausalLM",
    "LSGBartForConditionalGeneration",
    "LSGBartForQuestionAnswering",
    "LSGBartForSequenceClassification",
    "LSGBartModel",
    "LSGBartPreTrainedModel",
]
