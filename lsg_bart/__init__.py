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

__all__ = [
    "SPARSITY_TYPES",
    "LSGBartConfig",
    "LSGBartForCausalLM",
    "LSGBartForConditionalGeneration",
    "LSGBartForQuestionAnswering",
    "LSGBartForSequenceClassification",
    "LSGBartModel",
    "LSGBartPreTrainedModel",
]
