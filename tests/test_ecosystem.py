"""LSG-BART with the tools users already have: plain `nn.Linear` modules that int8 quantisation (torch.ao and
torchao) finds and replaces, and the Auto classes without remote code once the package is imported."""

import copy
import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from conftest import PARITY, REPO, padded_batch, tiny_config
from safetensors.torch import load_file
from torch import nn

from lsg_bart import LSGBartForConditionalGeneration

GENERATE = dict(max_new_tokens=6, min_new_tokens=6, num_beams=2)
TORCHAO = importlib.util.find_spec("torchao") is not None
needs_torchao = pytest.mark.skipif(
    not TORCHAO, reason="torchao is not installed (not in the dev extra: see pyproject.toml; .ci/run installs it)"
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LSGBartForConditionalGeneration(tiny_config(dropout=0.0, attention_dropout=0.0)).eval()


def encoder_and_generate(model, lengths=(300, 251)):
    """The encoder output and `generate`'s tokens for a padded batch (LSG attention, one padded row)."""
    input_ids, attention_mask = padded_batch(list(lengths))
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, **GENERATE)
    return encoded, generated


def relative_error(actual, expected):
    return ((actual - expected).norm() / expected.norm()).item()


def test_every_linear_layer_is_a_plain_nn_linear(model):
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    assert len(linears) == 33  # 2 encoder layers x 6, 2 decoder layers x 10, the LM head
    assert all(type(module) is nn.Linear for module in linears)
    assert model.lm_head.weight is model.model.shared.weight  # still tied


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dynamic_int8_quantisation_replaces_every_linear_layer_and_runs(model):
    expected_encoded, expected_generated = encoder_and_generate(model)
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    dynamic_linear = torch.ao.nn.quantized.dynamic.Linear
    assert sum(isinstance(module, dynamic_linear) for module in quantized.modules()) == 33
    assert not any(type(module) is nn.Linear for module in quantized.modules())
    encoded, generated = encoder_and_generate(quantized)
    assert relative_error(encoded, expected_encoded) < 0.02
    assert generated.shape == expected_generated.shape


@needs_torchao
@pytest.mark.parametrize("config_name", ["Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"])
def test_torchao_int8_configs_run(model, config_name):
    from torchao import quantization
    expected_encoded, expected_generated = encoder_and_generate(model)
    quantized = copy.deepcopy(model)
    quantization.quantize_(quantized, getattr(quantization, config_name)())
    weight = quantized.model.encoder.layers[0].self_attn.q_proj.weight
    assert type(weight) not in (torch.Tensor, nn.Parameter)  # torchao's tensor subclass: the layer runs as it is
    encoded, generated = encoder_and_generate(quantized)
    assert relative_error(encoded, expected_encoded) < 0.02
    assert generated.shape == expected_generated.shape


def run_fresh(code):
    """Run `code` in a new Python process (nothing imported yet) and return its stdout."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_importing_the_package_imports_neither_torch_nor_transformers():
    loaded = run_fresh("import sys, lsg_bart; print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    assert loaded.strip() == "[]"


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("saved") / "lsg-bart-tiny"
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("order", ["lsg_bart first", "transformers first"])
def test_auto_classes_load_saved_folders_without_remote_code(saved_folder, order):
    imports = "import lsg_bart\nimport transformers" if order == "lsg_bart first" else "import transformers\nimport lsg_bart"
    code = f"""{imports}
import json
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForQuestionAnswering
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

folder = {str(saved_folder)!r}
loaded = {{"AutoConfig": type(AutoConfig.from_pretrained(folder))}}
for auto in (AutoModel, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoModelForQuestionAnswering,
             AutoModelForCausalLM):
    loaded[auto.__name__] = type(auto.from_pretrained(folder))  # no trust_remote_code
print(json.dumps({{name: cls.__module__ + "." + cls.__name__ for name, cls in loaded.items()}}))
"""
    loaded = json.loads(run_fresh(code).strip().splitlines()[-1])
    module = "lsg_bart.modeling_lsg_bart."
    assert loaded == {
        "AutoConfig": "lsg_bart.configuration_lsg_bart.LSGBartConfig",
        "AutoModel": module + "LSGBartModel",
        "AutoModelForSeq2SeqLM": module + "LSGBartForConditionalGeneration",
        "AutoModelForSequenceClassification": module + "LSGBartForSequenceClassification",
        "AutoModelForQuestionAnswering": module + "LSGBartForQuestionAnswering",
        "AutoModelForCausalLM": module + "LSGBartForCausalLM",
    }
    assert (saved_folder / "modeling_lsg_bart.py").exists()  # still loadable as remote code


@pytest.mark.parametrize("case", ["norm", "pooling", "no_pass_global"])
def test_legacy_checkpoint_loads_in_place_with_the_package_class(case):
    """A `ccdv/lsg-bart-*`-style folder, untouched (its config says model_type "bart"), loaded with the package's
    class instead of the Auto classes: the original's golden outputs."""
    folder = PARITY / case
    model = LSGBartForConditionalGeneration.from_pretrained(folder).eval()
    inputs = load_file(folder / "inputs.safetensors")
    expected = load_file(folder / "expected.safetensors")
    with torch.no_grad():
        outputs = model(**inputs)
    torch.testing.assert_close(outputs.encoder_last_hidden_state, expected["encoder_last_hidden_state"], atol=1e-4, rtol=0)
    torch.testing.assert_close(outputs.logits, expected["logits"], atol=1e-4, rtol=0)


def test_without_the_package_new_checkpoints_need_trust_remote_code(saved_folder):
    """Not silently loaded as plain BART: transformers alone refuses the folder and names `trust_remote_code`."""
    code = f"""
from transformers import AutoConfig, AutoModel
for auto in (AutoConfig, AutoModel):
    try:
        auto.from_pretrained({str(saved_folder)!r}, trust_remote_code=False)
    except ValueError as error:
        print("trust_remote_code" in str(error))
"""
    assert run_fresh(code).split() == ["True", "True"]


@pytest.mark.parametrize("first_import", ["from lsg_bart import LSGBartConfig", "import lsg_bart.lsg_kernels"])
def test_registration_waits_when_a_package_module_imports_transformers(first_import):
    """A package module that imports transformers first is half-built when transformers finishes loading: no
    circular import, and `from lsg_bart import ...` registers once it can."""
    code = f"""{first_import}
from lsg_bart import LSGBartModel
from transformers import AutoModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING
print(MODEL_MAPPING[LSGBartModel.config_class].__name__)
"""
    assert run_fresh(code).split()[-1] == "LSGBartModel"


def test_int8_quantisation_in_a_fresh_process():
    """As a user's script runs it: a fresh process, the package's model, torch.ao's dynamic int8 on every
    `nn.Linear`, then torchao's int8 weight-only (where installed), and `generate` on a long padded input with
    each."""
    code = """
import copy, importlib.util, torch
from torch import nn
from lsg_bart import LSGBartConfig, LSGBartForConditionalGeneration
config = LSGBartConfig(vocab_size=120, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=1024,
                       block_size=16, sparse_block_size=16, num_global_tokens=2)
model = LSGBartForConditionalGeneration(config).eval()
linears = sum(type(module) is nn.Linear for module in model.modules())
quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
replaced = sum(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in quantized.modules())
forms = [quantized]
if importlib.util.find_spec("torchao"):
    from torchao.quantization import Int8WeightOnlyConfig, quantize_
    forms.append(copy.deepcopy(model))
    quantize_(forms[-1], Int8WeightOnlyConfig())
input_ids = torch.randint(5, 120, (2, 300))
attention_mask = torch.ones_like(input_ids)
attention_mask[1, 250:] = 0
shapes = []
for candidate in forms:
    with torch.no_grad():
        shapes.append(tuple(candidate.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=2,
                                               max_new_tokens=5, min_new_tokens=5).shape))
print(linears, replaced, shapes)
"""
    assert run_fresh(code).strip().splitlines()[-1] == f"33 33 {[(2, 6)] * (1 + TORCHAO)}"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_summarization_pipeline_runs_an_int8_model():
    from lsg_bart.pipeline_lsg_bart import LSGBartSummarizationPipeline
    from lsg_bart.tiny import build_tokenizer, sample_text

    tokenizer = build_tokenizer(model_max_length=1024)
    torch.manual_seed(0)
    model = LSGBartForConditionalGeneration(tiny_config(vocab_size=len(tokenizer), dropout=0.0)).eval()
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    summarizer = LSGBartSummarizationPipeline(model=quantized, tokenizer=tokenizer)
    long_text = sample_text(2000, 3)
    assert len(tokenizer(long_text)["input_ids"]) > 1024  # truncated to the model's length by the pipeline
    [result] = summarizer(long_text, max_new_tokens=5, min_new_tokens=5, num_beams=2)
    assert isinstance(result["summary_text"], str) and result["summary_text"]


def test_transformers_still_imports_when_the_registration_cannot_run():
    """Without torch (blocked here), `import transformers` after `import lsg_bart` works; using the package then
    says what is missing."""
    code = """
import sys

sys.modules["torch"] = None  # as if torch were not installed: imports fail, find_spec finds nothing
import lsg_bart
import transformers
print("transformers imported")
try:
    from lsg_bart import LSGBartConfig
except ImportError as error:
    print("package:", error)
"""
    printed = run_fresh(code).splitlines()
    assert printed[-2][:21] == "transformers imported" and printed[-1].startswith("package: ")
    assert "torch" in printed[-1]
