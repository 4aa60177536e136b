"""LSG-BART: BART with Local + Sparse + Global attention for long inputs, on transformers 4.46 to 5.x.

The classes are imported on first use (PEP 562), so that `lsg-bart-convert --help` and its argument errors answer
before torch and transformers load.
"""

import importlib

__version__ = "0.1.0"

# The remote-code files: what a checkpoint folder carries so that it loads with `trust_remote_code=True`.
REMOTE_CODE_FILES = (
    "configuration_lsg_bart.py",
    "modeling_lsg_bart.py",
    "lsg_attention.py",
    "lsg_kernels.py",
    "compat.py",
)

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


def __getattr__(name):
    """The package's classes and `SPARSITY_TYPES`, imported on first use. The modelling module is always imported:
    it registers the classes for the Auto classes, as importing the package used to."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    modeling = importlib.import_module(".modeling_lsg_bart", __name__)
    configuration = importlib.import_module(".configuration_lsg_bart", __name__)
    value = getattr(modeling if hasattr(modeling, name) else configuration, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
