"""LSG-BART: BART with Local + Sparse + Global attention for long inputs, on transformers 4.46 to 5.x.

Importing the package registers its config and models with transformers' Auto classes, so that
`AutoModelForSeq2SeqLM.from_pretrained(folder)` loads LSG-BART folders without `trust_remote_code`. The
registration waits until transformers is imported, and the classes are imported on first use (PEP 562), so that
`lsg-bart-convert --help` and its argument errors answer before torch and transformers load.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# The remote-code files: what a checkpoint folder carries so that it loads with `trust_remote_code=True`.
REMOTE_CODE_FILES = (
    "configuration_lsg_bart.py",
    "lsg_settings.py",
    "modeling_lsg_bart.py",
    "lsg_attention.py",
    "lsg_kernels.py",
    "cpu_linear.py",
    "decoder.py",
    "pipeline_lsg_bart.py",
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
    it declares the classes for the remote-code Auto mapping (`auto_map`), and they are registered with the Auto
    classes here too."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    modeling = importlib.import_module(".modeling_lsg_bart", __name__)
    configuration = importlib.import_module(".configuration_lsg_bart", __name__)
    value = getattr(modeling if hasattr(modeling, name) else configuration, name)
    globals()[name] = value
    register_auto_classes()
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def register_auto_classes():
    """Register `LSGBartConfig` with `AutoConfig` and each model class with its Auto class (as the config's
    `auto_map` names them), once; the folders' own code is still used with `trust_remote_code=True`."""
    if REGISTERED:
        return
    import transformers

    from .configuration_lsg_bart import AUTO_MAP, LSGBartConfig

    modeling = importlib.import_module(".modeling_lsg_bart", __name__)
    transformers.AutoConfig.register(LSGBartConfig.model_type, LSGBartConfig, exist_ok=True)
    for auto_class, target in AUTO_MAP.items():
        if auto_class != "AutoConfig":
            model_class = getattr(modeling, target.split(".")[-1])
            getattr(transformers, auto_class).register(LSGBartConfig, model_class, exist_ok=True)
    REGISTERED.append(True)


REGISTERED = []


def importing_a_submodule():
    """Whether one of this package's modules is being imported now (so that it cannot be imported again yet):
    importlib marks a module's spec `_initializing` while its code runs."""
    return any(
        getattr(getattr(module, "__spec__", None), "_initializing", False)
        for name, module in list(sys.modules.items())
        if name.startswith(__name__ + ".")
    )


class RegisterWhenTransformersLoads(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when `transformers` is first imported, it lets the usual finder load it, then runs
    `register_auto_classes`. When one of this package's modules is what imports transformers, that module is
    half-built; the registration then waits for `__getattr__` (`from lsg_bart import ...`) to finish it."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                if importing_a_submodule():
                    return
                try:
                    register_auto_classes()
                except ImportError:  # e.g. no torch: `import transformers` must still work; using the package says why
                    pass

            spec.loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:
    register_auto_classes()
else:
    sys.meta_path.insert(0, RegisterWhenTransformersLoads())
