"""The converter (issue 3): weights as LSG-SPEC 6.2-6.3, the output folder, the command line, errors, safety."""

import hashlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    BartConfig,
    BartForCausalLM,
    BartForConditionalGeneration,
    BartForQuestionAnswering,
    BartForSequenceClassification,
    BartModel,
)

import lsg_bart
from lsg_bart import (
    REMOTE_CODE_FILES,
    LSGBartForCausalLM,
    LSGBartForConditionalGeneration,
    LSGBartForSequenceClassification,
)
from lsg_bart import checkpoint_test, convert_weights, safe_output
from lsg_bart import convert as convert_module
from lsg_bart.convert import (
    SUPPORTED_ARCHITECTURES,
    ConversionWarning,
    convert_checkpoint,
    main,
    positional_global_rows,
    run_checkpoint_test,
    tile_positions,
)
from lsg_bart.tiny import build_tiny_bart, build_tokenizer

REPO = Path(__file__).resolve().parents[1]
PARITY = Path(__file__).parent / "fixtures" / "parity"
CASES = sorted(p.name for p in PARITY.iterdir() if (p / "case.json").exists())
SMALL_LSG = {"block_size": 16, "sparse_block_size": 16, "sparsity_factor": 2, "num_global_tokens": 2}
ENC_POS = "model.encoder.embed_positions.weight"
DEC_POS = "model.decoder.embed_positions.weight"
GLOBAL = "model.encoder.global_embeddings.weight"
BOS_ID, MASK_ID = 0, 4  # lsg_bart.tiny's tokenizer, as facebook/bart-*


def weights(folder):
    return load_file(Path(folder) / "model.safetensors")


def folder_digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


def tree_digest(folder):
    """Every file and folder under `folder` (hidden ones too), relative path -> sha256 of the file (None: a folder)."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): None if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
    }


def strided_reference(rows, stride, k):
    """Literal reading of LSG-SPEC 6.3: a (512 / s) x s grid, s = stride // k, read column by column."""
    s = stride // k
    height = 512 // s
    return torch.stack([rows[(i % height) * s + i // height] for i in range(512)])


@pytest.fixture(scope="module")
def tiny_bart(tmp_path_factory):
    """A tiny BART (BartForConditionalGeneration, 128 positions) with its tokenizer, saved once."""
    path = tmp_path_factory.mktemp("src") / "tiny-bart"
    build_tiny_bart(path, max_position_embeddings=128, seed=1)
    return path


# ---------------------------------------------------------------------------------------------------------------
# 3. Weights: parity with the original converter
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_parity_case_weights_and_outputs(case, tmp_path):
    spec = json.loads((PARITY / case / "case.json").read_text())
    with pytest.warns(ConversionWarning, match="below the source"):  # 512 < the source's 1024 positions
        out = convert_checkpoint(
            PARITY / "initial",
            tmp_path / case,
            spec["max_sequence_length"],
            model_kwargs=spec["lsg_kwargs"],
            **spec["converter"],
        )
    got, expected = weights(out), weights(PARITY / case)
    for key in (GLOBAL, ENC_POS, DEC_POS):
        assert got[key].shape == expected[key].shape
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0)
    assert set(got) == set(expected)
    for key in expected:  # everything else is the source's weights, untouched
        torch.testing.assert_close(got[key], expected[key], atol=1e-6, rtol=0)

    inputs = load_file(PARITY / case / "inputs.safetensors")
    reference = load_file(PARITY / case / "expected.safetensors")
    mask_before = inputs["attention_mask"].clone()
    model = LSGBartForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        outputs = model(**inputs)
    torch.testing.assert_close(
        outputs.encoder_last_hidden_state, reference["encoder_last_hidden_state"], atol=1e-4, rtol=0
    )
    torch.testing.assert_close(outputs.logits, reference["logits"], atol=1e-4, rtol=0)
    assert torch.equal(inputs["attention_mask"], mask_before)

    if "classification_logits" in reference:
        classifier = LSGBartForSequenceClassification.from_pretrained(out, num_labels=3).eval()
        classifier.load_state_dict(load_file(PARITY / case / "classification_head.safetensors"), strict=False)
        with torch.no_grad():
            logits = classifier(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        torch.testing.assert_close(logits, reference["classification_logits"], atol=1e-4, rtol=0)


def test_positions_tiled_and_global_rows_from_short_positions(tiny_bart, tmp_path):
    """128 learned positions: tiled to 304 rows; below 512 rows, Gaussian rows complete the global grid (seeded)."""
    source = weights(tiny_bart)
    out = convert_checkpoint(tiny_bart, tmp_path / "a", 304, model_kwargs=SMALL_LSG, seed=7)
    got = weights(out)
    for key in (ENC_POS, DEC_POS):
        src = source[key]
        assert got[key].shape == (306, src.shape[1])
        assert torch.equal(got[key][:2], src[:2])
        for row in range(304):
            assert torch.equal(got[key][2 + row], src[2 + row % 128])

    # Global rows: positions 0..127 of the source, then Gaussian rows, read with stride 64 (k = 1); + mask embedding
    bos, mask = BOS_ID, MASK_ID
    embeddings = source["model.shared.weight"]
    positional = got[GLOBAL] - embeddings[mask]
    positional[0] = got[GLOBAL][0] - embeddings[bos]
    height = 512 // 64
    for index in range(512):
        row = (index % height) * 64 + index // height
        if row < 128:
            torch.testing.assert_close(positional[index], source[ENC_POS][2 + row], atol=1e-6, rtol=0)

    again = weights(convert_checkpoint(tiny_bart, tmp_path / "b", 304, model_kwargs=SMALL_LSG, seed=7))
    other = weights(convert_checkpoint(tiny_bart, tmp_path / "c", 304, model_kwargs=SMALL_LSG, seed=8))
    assert torch.equal(again[GLOBAL], got[GLOBAL])
    assert not torch.equal(other[GLOBAL], got[GLOBAL])


def test_global_rows_from_long_positions_every_kth_row():
    positions = torch.randn(2048 + 100, 8)  # not a multiple of 512: cut to 2048, then every 4th row
    rows = positional_global_rows(positions, global_positional_stride=64)
    torch.testing.assert_close(rows, strided_reference(positions[:2048:4], 64, 4))
    torch.testing.assert_close(positional_global_rows(positions[:2048], 64), rows)
    # A stride below k: no reordering. A stride whose grid does not divide 512: a clear error.
    torch.testing.assert_close(positional_global_rows(positions, 2), positions[:2048:4])
    with pytest.raises(ValueError, match="global_positional_stride"):
        positional_global_rows(positions, 96 * 4)


def test_tile_positions_cuts_and_tiles():
    table = torch.arange(12.0).view(6, 2)  # 2 offset rows + 4 learned rows
    assert tile_positions(table, 3)[:, 0].tolist() == [0, 2, 4, 6, 8]
    assert tile_positions(table, 10)[:, 0].tolist() == [0, 2, 4, 6, 8, 10, 4, 6, 8, 10, 4, 6]


def test_random_global_init_is_seeded_and_keeps_bos(tiny_bart, tmp_path):
    kwargs = dict(model_kwargs=SMALL_LSG, random_global_init=True)
    plain = weights(convert_checkpoint(tiny_bart, tmp_path / "plain", 512, model_kwargs=SMALL_LSG, seed=3))
    first = weights(convert_checkpoint(tiny_bart, tmp_path / "r1", 512, seed=3, **kwargs))
    second = weights(convert_checkpoint(tiny_bart, tmp_path / "r2", 512, seed=3, **kwargs))
    other = weights(convert_checkpoint(tiny_bart, tmp_path / "r3", 512, seed=4, **kwargs))
    assert torch.equal(first[GLOBAL], second[GLOBAL])
    assert not torch.equal(first[GLOBAL], other[GLOBAL])

    embeddings = first["model.shared.weight"]
    mask = MASK_ID
    positional = plain[GLOBAL] - embeddings[mask]  # rows 1..511 of the plain init: positions + mask embedding
    torch.testing.assert_close(first[GLOBAL][0], plain[GLOBAL][0], atol=1e-6, rtol=0)  # positions + bos either way
    noise = first[GLOBAL][1:] - positional[1:]
    assert not torch.allclose(noise, embeddings[mask].expand_as(noise))
    # The sampled rows follow the token embeddings' distribution (mean and per-dimension spread).
    assert (noise.mean(0) - embeddings.mean(0)).abs().max() < 0.25 * embeddings.std(0).mean()
    torch.testing.assert_close(noise.std(0), embeddings.std(0), rtol=0.25, atol=0.0)


def _tokenizer_variant(tiny_bart, tmp_path, edit):
    """A copy of the tiny BART whose tokenizer is changed by `edit(tokenizer)`."""
    folder = tmp_path / "variant"
    model = BartForConditionalGeneration.from_pretrained(tiny_bart)
    model.save_pretrained(folder)
    tokenizer = build_tokenizer(model_max_length=128)
    edit(tokenizer)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("problem", ["no mask token", "mask id outside the vocabulary"])
def test_unusable_mask_token_falls_back_to_random_init(problem, tiny_bart, tmp_path):
    def edit(tokenizer):
        if problem == "no mask token":
            tokenizer.mask_token = None
        else:  # the distilbart case: the tokenizer's mask id is past the model's vocabulary
            tokenizer.add_special_tokens({"mask_token": "<extra_mask>"})

    source = _tokenizer_variant(tiny_bart, tmp_path, edit)
    with pytest.warns(ConversionWarning, match="random_global_init"):
        fallback = convert_checkpoint(source, tmp_path / "fallback", 512, model_kwargs=SMALL_LSG, seed=5)
    explicit = convert_checkpoint(
        source, tmp_path / "explicit", 512, model_kwargs=SMALL_LSG, seed=5, random_global_init=True
    )
    assert torch.equal(weights(fallback)[GLOBAL], weights(explicit)[GLOBAL])
    assert "Gaussian" in (fallback / "README.md").read_text()


# ---------------------------------------------------------------------------------------------------------------
# 2. Sources: every BART architecture, LSG resize, legacy upgrade
# ---------------------------------------------------------------------------------------------------------------

BART_CLASSES = {
    "BartModel": BartModel,
    "BartForConditionalGeneration": BartForConditionalGeneration,
    "BartForSequenceClassification": BartForSequenceClassification,
    "BartForQuestionAnswering": BartForQuestionAnswering,
    "BartForCausalLM": BartForCausalLM,
}


@pytest.mark.parametrize("architecture", SUPPORTED_ARCHITECTURES)
def test_each_architecture_from_its_config(architecture, tiny_bart, tmp_path):
    source = tmp_path / architecture
    torch.manual_seed(0)
    model = BART_CLASSES[architecture].from_pretrained(tiny_bart)
    model.save_pretrained(source)
    build_tokenizer(model_max_length=128).save_pretrained(source)

    out = convert_checkpoint(source, tmp_path / "out", 256, model_kwargs=SMALL_LSG)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LSG" + architecture]
    assert config["model_type"] == "lsg_bart" and config["max_position_embeddings"] == 256
    got = weights(out)
    src = {k: v for k, v in model.state_dict().items()}
    # LSG-BART's decoder-only model stores its token embeddings as `model.shared.weight`, as the seq2seq models do.
    renamed = {"model.shared.weight": "model.decoder.embed_tokens.weight"} if architecture == "BartForCausalLM" else {}
    for key, value in got.items():
        if key.endswith("embed_positions.weight"):
            assert value.shape[0] == 258 and torch.equal(value[:130], src[key])
        elif key.endswith("global_embeddings.weight"):
            assert value.shape == (512, 32)
        else:
            assert torch.equal(value, src[renamed.get(key, key)]), key
    assert any(k.endswith("global_embeddings.weight") for k in got) == (architecture != "BartForCausalLM")

    lsg_class = getattr(lsg_bart, "LSG" + architecture)
    loaded = lsg_class.from_pretrained(out).eval()
    ids = torch.tensor([[0] + list(range(10, 210)) + [2]])
    with torch.no_grad():
        output = loaded(input_ids=ids)
    assert torch.isfinite(output[0]).all()


def test_architecture_override_and_lsg_names(tiny_bart, tmp_path):
    out = convert_checkpoint(tiny_bart, tmp_path / "cls", 256, architecture="BartForSequenceClassification",
                             model_kwargs=SMALL_LSG)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LSGBartForSequenceClassification"]
    assert "classification_head.out_proj.weight" in weights(out)
    out = convert_checkpoint(tiny_bart, tmp_path / "qa", 256, architecture="LSGBartForQuestionAnswering",
                             model_kwargs=SMALL_LSG)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LSGBartForQuestionAnswering"]


def test_legacy_checkpoint_resized_and_upgraded(tmp_path):
    source = PARITY / "norm"
    before = folder_digest(source)
    out = convert_checkpoint(source, tmp_path / "resized", 1024, resize_lsg=True)
    assert folder_digest(source) == before  # the source is never written to

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "lsg_bart" and config["max_position_embeddings"] == 1024
    assert "base_model_prefix" not in config
    assert config["auto_map"]["AutoConfig"] == "configuration_lsg_bart.LSGBartConfig"
    assert (out / "modeling_lsg_bart.py").exists() and (out / "configuration_lsg_bart.py").exists()
    for field in ("block_size", "sparse_block_size", "num_global_tokens", "sparsity_type"):
        assert config[field] == json.loads((source / "config.json").read_text())[field]

    got, original = weights(out), weights(source)
    assert torch.equal(got[GLOBAL], original[GLOBAL])  # resizing keeps the global tokens
    for key in (ENC_POS, DEC_POS):
        assert got[key].shape == (1026, 32)
        assert torch.equal(got[key][:514], original[key])
        assert torch.equal(got[key][514:], original[key][2:])
    # Same outputs as the original checkpoint on inputs that fit in both.
    inputs = load_file(source / "inputs.safetensors")
    reference = load_file(source / "expected.safetensors")
    model = LSGBartForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        outputs = model(**inputs)
    torch.testing.assert_close(outputs.logits, reference["logits"], atol=1e-4, rtol=0)
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 1024


def test_lsg_source_reinitialised_keeps_first_global_token(tmp_path):
    source = PARITY / "norm"
    original = weights(source)
    out = convert_checkpoint(source, tmp_path / "out", 512, keep_first_global_token=True)
    got = weights(out)
    assert torch.equal(got[GLOBAL][0], original[GLOBAL][0])
    # Other rows: the LSG model's 512 positions (k = 1) read with stride 64, plus the mask embedding (id 4).
    expected = strided_reference(original[ENC_POS][2:], 64, 1) + original["model.shared.weight"][4]
    torch.testing.assert_close(got[GLOBAL][1:], expected[1:], atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# 4. The output folder; loading in a fresh process without the package
# ---------------------------------------------------------------------------------------------------------------


def test_output_folder_contents(tiny_bart, tmp_path):
    from huggingface_hub import ModelCard

    out = convert_checkpoint(tiny_bart, tmp_path / "lsg", 1008, model_kwargs=dict(SMALL_LSG, sparsity_type="pooling"))
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md", "tokenizer.json",
            "tokenizer_config.json", *REMOTE_CODE_FILES} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".tmp"))]
    package = Path(lsg_bart.__file__).parent
    for name in REMOTE_CODE_FILES:
        assert (out / name).read_text() == (package / name).read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSeq2SeqLM"] == "modeling_lsg_bart.LSGBartForConditionalGeneration"
    assert config["sparsity_type"] == "pooling" and config["max_position_embeddings"] == 1008
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 1008
    assert json.loads((out / "generation_config.json").read_text())["decoder_start_token_id"] == 2

    card = ModelCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == str(tiny_bart)
    assert data["pipeline_tag"] == "summarization" and data["library_name"] == "transformers"
    assert {"lsg", "long-context", "bart"} <= set(data["tags"])
    assert "| `sparsity_type` | `pooling` |" in card.text and "| `max_sequence_length` | `1008` |" in card.text
    assert "AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=True)" in card.text


def test_tokenizer_is_recorded_with_a_class_every_supported_transformers_reads(tiny_bart, tmp_path):
    """transformers 5 saves a generic fast tokenizer as `TokenizersBackend`, which transformers 4 cannot load; the
    converter and the tiny source record `BartTokenizer` instead, which tokenizes alike (the version matrix loads a
    converted checkpoint under 4.46.3: tests/remote_code)."""
    from transformers import AutoTokenizer

    assert json.loads((tiny_bart / "tokenizer_config.json").read_text())["tokenizer_class"] == "BartTokenizer"
    source = AutoTokenizer.from_pretrained(tiny_bart)
    for origin in (tiny_bart, PARITY / "initial"):
        out = convert_checkpoint(origin, tmp_path / origin.name, 1024)
        assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "BartTokenizer"
    converted = AutoTokenizer.from_pretrained(tmp_path / tiny_bart.name)  # registered by the package: no question
    text = "The model reads long documents. Ünïcödé  and <mask>!"
    assert converted(text, "a pair")["input_ids"] == source(text, "a pair")["input_ids"]
    assert converted.model_max_length == 1024


def test_a_tokenizer_that_bart_reads_differently_is_recorded_as_generic(tmp_path):
    from tokenizers import normalizers
    from transformers import AutoTokenizer

    from lsg_bart.tokenizer_files import NEWER_CLASS_NAMES, save_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()  # BartTokenizer would not lowercase
    recorded = save_tokenizer(tokenizer, tmp_path)
    assert recorded == "PreTrainedTokenizerFast"  # tokenizer.json read as it is, by every version
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == recorded
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("LOUD Words")["input_ids"] == tokenizer("loud words")["input_ids"]
    if type(again).__name__ in NEWER_CLASS_NAMES:  # transformers 5: saved again, it is made portable again
        assert save_tokenizer(again, tmp_path / "again") == "PreTrainedTokenizerFast"


def test_the_modeling_file_imports_every_remote_code_file():
    """A legacy checkpoint's auto_map names modeling_lsg_bart.py for every class, including its config, and
    transformers 4.46 to 5.0 (at least) copy out of a local folder only the files that the entry file itself imports:
    every remote-code file must be imported by modeling_lsg_bart.py directly (.ci/version_matrix.sh runs them)."""
    text = (Path(lsg_bart.__file__).parent / "modeling_lsg_bart.py").read_text()
    imported = set(re.findall(r"^\s*from\s+\.(\S+)\s+import", text, flags=re.MULTILINE))
    missing = sorted({name[: -len(".py")] for name in REMOTE_CODE_FILES} - imported - {"modeling_lsg_bart"})
    assert not missing, f"modeling_lsg_bart.py must import these modules itself: {missing}"


FRESH_PROCESS = r"""
import json, sys
try:
    import lsg_bart
except ImportError:
    pass
else:
    sys.exit("lsg_bart is importable")
import torch, transformers
from safetensors.torch import save_file
folder, out = sys.argv[1], sys.argv[2]
tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
ids = tokenizer(" ".join(["long documents and short summaries"] * 60), return_tensors="pt")["input_ids"]
decoder_ids = torch.tensor([[2, 0, 10, 11]])
results = {"input_ids": ids}
for name in ["AutoModel", "AutoModelForSeq2SeqLM", "AutoModelForSequenceClassification",
             "AutoModelForQuestionAnswering", "AutoModelForCausalLM"]:
    model = getattr(transformers, name).from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    with torch.no_grad():
        if name == "AutoModelForCausalLM":
            # Decoder states from fixed embeddings: an encoder-decoder checkpoint stores its token embeddings
            # as `model.shared`, which the decoder-only class does not read, so token ids would not compare.
            embeds = torch.randn(1, 4, model.config.d_model, generator=torch.Generator().manual_seed(0))
            results[name] = model(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1]
        else:
            kwargs = {} if name == "AutoModelForSequenceClassification" else {"decoder_input_ids": decoder_ids}
            output = model(input_ids=ids, **kwargs)
            results[name] = output.encoder_last_hidden_state
            if name == "AutoModelForSeq2SeqLM":
                results["logits"] = output.logits
                results["generated"] = model.generate(input_ids=ids, num_beams=2, max_new_tokens=3)
save_file({k: v.contiguous() for k, v in results.items()}, out)
print(json.dumps({"model_max_length": tokenizer.model_max_length}))
"""


def test_loads_in_fresh_process_without_the_package(tiny_bart, tmp_path):
    out = convert_checkpoint(tiny_bart, tmp_path / "lsg", 2048, model_kwargs=SMALL_LSG)
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "lsg_bart.py").write_text("raise ImportError('lsg_bart is blocked in this process')\n")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(blocker), PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1",
               HF_MODULES_CACHE=str(tmp_path / "modules"))
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(out), str(tmp_path / "outputs.safetensors")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["model_max_length"] == 2048

    child = load_file(tmp_path / "outputs.safetensors")
    ids = child["input_ids"]
    assert ids.shape[1] > 2 * SMALL_LSG["block_size"] + 2  # long enough for the LSG path
    decoder_ids = torch.tensor([[2, 0, 10, 11]])
    model = LSGBartForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        reference = model(input_ids=ids, decoder_input_ids=decoder_ids)
        generated = model.generate(input_ids=ids, num_beams=2, max_new_tokens=3)
    for name in ["AutoModel", "AutoModelForSeq2SeqLM", "AutoModelForSequenceClassification",
                 "AutoModelForQuestionAnswering"]:
        torch.testing.assert_close(child[name], reference.encoder_last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(child["logits"], reference.logits, atol=1e-5, rtol=0)
    assert torch.equal(child["generated"], generated)
    causal = LSGBartForCausalLM.from_pretrained(out).eval()
    embeds = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = causal(inputs_embeds=embeds, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(child["AutoModelForCausalLM"], states, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# 5. --run_test
# ---------------------------------------------------------------------------------------------------------------


def test_run_test_runs_its_own_class_at_full_length_and_the_others_short(tiny_bart, tmp_path, caplog):
    caplog.set_level("INFO", logger="lsg_bart.convert")
    convert_checkpoint(tiny_bart, tmp_path / "lsg", 208, model_kwargs=SMALL_LSG, run_test=True)
    tested = [r.getMessage().strip() for r in caplog.records if r.getMessage().strip().startswith("test ")]
    # One line before each class (so that a long run shows where it is) and one after; the checkpoint's own class
    # (seq2seq) first, at the full length; the others on 4 blocks of 16 tokens.
    order = ["AutoModelForSeq2SeqLM", "AutoModel", "AutoModelForSequenceClassification",
             "AutoModelForQuestionAnswering", "AutoModelForCausalLM"]
    assert len(tested) == 2 * len(order)
    for index, name in enumerate(order):
        tokens = 208 if index == 0 else 64
        before, after = tested[2 * index : 2 * index + 2]
        assert before == f"test {index + 1}/5 {name}: loading, then a {tokens}-token input ...", before
        assert after.startswith(f"test {index + 1}/5 {name} (") and f"{tokens} tokens ->" in after, after
        if name in ("AutoModelForSeq2SeqLM", "AutoModel"):  # their decoder reads 2 tokens, whatever the length
            assert f"{tokens} tokens -> (1, 2, " in after, after


def test_run_test_of_decoder_only_checkpoint(tiny_bart, tmp_path):
    out = convert_checkpoint(tiny_bart, tmp_path / "causal", 208, architecture="BartForCausalLM",
                             model_kwargs=SMALL_LSG)
    assert set(run_checkpoint_test(out)) == {"AutoModelForCausalLM"}


def test_failed_run_test_leaves_nothing(tiny_bart, tmp_path, monkeypatch):
    def broken(folder, *args, **kwargs):
        assert (Path(folder) / "model.safetensors").exists()  # tested before it is published
        raise RuntimeError("AutoModel: non-finite outputs")

    monkeypatch.setattr(convert_module, "run_checkpoint_test", broken)
    with pytest.raises(RuntimeError, match="non-finite"):
        convert_checkpoint(tiny_bart, tmp_path / "lsg", 208, model_kwargs=SMALL_LSG, run_test=True)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# 6. Nothing lost, nothing half-written; clear errors
# ---------------------------------------------------------------------------------------------------------------


def test_interrupted_run_leaves_no_partial_folder(tiny_bart, tmp_path, monkeypatch):
    old = convert_checkpoint(tiny_bart, tmp_path / "old", 256, model_kwargs=SMALL_LSG, seed=1)
    before = folder_digest(old)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_weights, "model_card", interrupted)  # after the weights are written
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(tiny_bart, tmp_path / "new", 256, model_kwargs=SMALL_LSG)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]

    # An interrupted --overwrite keeps the old folder as it was.
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(tiny_bart, old, 256, model_kwargs=SMALL_LSG, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert folder_digest(old) == before


def test_overwrite_replaces_a_previous_checkpoint_only(tiny_bart, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty; pass overwrite=True to replace it"):
        convert_checkpoint(tiny_bart, out, 256, model_kwargs=SMALL_LSG)
    with pytest.raises(FileExistsError, match=r"overwrite=True would remove everything in .*\(notes.txt\), but notes"):
        convert_checkpoint(tiny_bart, out, 256, model_kwargs=SMALL_LSG, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    (out / "notes.txt").unlink()

    empty = convert_checkpoint(tiny_bart, out, 256, model_kwargs=SMALL_LSG, seed=1)  # an empty folder is taken
    first = folder_digest(empty)
    convert_checkpoint(tiny_bart, out, 256, model_kwargs=SMALL_LSG, seed=2, overwrite=True)  # a checkpoint is replaced
    second = folder_digest(out)
    assert second.keys() == first.keys() and second["model.safetensors"] != first["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]

    # A checkpoint with anything else in it (a file, a folder) is not replaced, and the message lists it all.
    (out / "eval").mkdir()
    (out / "eval" / "scores.json").write_text("{}")
    before = tree_digest(tmp_path)
    with pytest.raises(FileExistsError, match=r"config.json, .*eval/.*, but eval/ is not part of a BART"):
        convert_checkpoint(tiny_bart, out, 256, model_kwargs=SMALL_LSG, overwrite=True)
    assert tree_digest(tmp_path) == before


def test_source_is_never_the_output(tiny_bart, tmp_path):
    before = folder_digest(tiny_bart)
    for target in (tiny_bart, tiny_bart / "inside"):
        with pytest.raises(ValueError, match="source"):
            convert_checkpoint(tiny_bart, target, 256, model_kwargs=SMALL_LSG, overwrite=True)
    assert folder_digest(tiny_bart) == before


# ---------------------------------------------------------------------------------------------------------------
# Killed runs (SIGKILL, the OOM killer): what they leave, the next run removes
# ---------------------------------------------------------------------------------------------------------------


def _hidden(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


# The converter's functions where a killed run is stopped, and their modules.
POINT_MODULES = {
    "save_converted": convert_module,
    "model_card": convert_weights,
    "_test_inputs": checkpoint_test,
    "push_folder_to_hub": convert_module,
}


def _killed_conversion(point, source, output, **kwargs):
    """Run `convert_checkpoint(source, output, 256, ...)` in a forked child, stop it at `point` and SIGKILL it there.

    `point` names a function of the converter (the child stops when it is called) or "between renames" (the child
    stops once `--overwrite` has moved the old output aside, before the new one is renamed into place).
    """
    ready, signal_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(ready)
            torch.set_num_threads(1)  # a forked OpenMP pool must not be used

            def stop():
                os.write(signal_end, b"x")
                time.sleep(120)

            if point == "between renames":
                real_replace = os.replace

                def replace(src, dst):
                    real_replace(src, dst)
                    if Path(dst).parent.name == "previous":
                        stop()

                os.replace = replace
            else:
                setattr(POINT_MODULES[point], point, lambda *args, **kw: stop())
            convert_checkpoint(source, output, 256, model_kwargs=SMALL_LSG, **kwargs)
        finally:
            os._exit(1)
    os.close(signal_end)
    try:
        readable, _, _ = select.select([ready], [], [], 120)
        assert readable and os.read(ready, 1) == b"x", f"the conversion ended before reaching {point!r}"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready)


@pytest.mark.parametrize(
    "point, run_test",
    [
        ("save_converted", False),  # the work folder made, nothing written in it yet
        ("model_card", False),  # the weights and tokenizer written, not the model card
        ("_test_inputs", True),  # during --run_test: the checkpoint complete, being loaded
        ("push_folder_to_hub", False),  # after publishing: a normal end for the checkpoint
    ],
)
def test_sigkill_leftovers_removed_by_the_next_run(point, run_test, tiny_bart, tmp_path):
    output = tmp_path / "lsg"
    push = "me/lsg" if point == "push_folder_to_hub" else None
    _killed_conversion(point, tiny_bart, output, run_test=run_test, push_to_hub=push)
    left = _hidden(tmp_path)  # what the killed run left: its work folder, unless it had finished with it
    assert left == [] if push else len(left) == 1 and left[0].startswith(".lsg.") and left[0].endswith(".tmp")
    convert_checkpoint(tiny_bart, output, 256, model_kwargs=SMALL_LSG, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["lsg"]
    assert (output / "model.safetensors").exists() and (output / "README.md").exists()


def test_sigkill_between_the_renames_of_overwrite_puts_the_old_output_back(tiny_bart, tmp_path):
    output = convert_checkpoint(tiny_bart, tmp_path / "lsg", 256, model_kwargs=SMALL_LSG, seed=1)
    before = tree_digest(output)
    _killed_conversion("between renames", tiny_bart, output, overwrite=True, seed=2)
    assert not output.exists()  # the old checkpoint is inside the hidden work folder
    with pytest.raises(FileExistsError, match="not empty"):  # the next run puts it back, then sees it
        convert_checkpoint(tiny_bart, output, 256, model_kwargs=SMALL_LSG)
    assert [p.name for p in tmp_path.iterdir()] == ["lsg"]
    assert tree_digest(output) == before


def test_leftovers_of_running_or_other_conversions_are_left_alone(tiny_bart, tmp_path):
    output = tmp_path / "lsg"
    running, marker = safe_output._start_work(output)  # a live run holds its marker's lock
    other, other_marker = safe_output._start_work(tmp_path / "lsg.v2")  # `.lsg.v2.*.tmp` starts like ours
    other_marker.close()  # dead, but another output's: that output's next run removes it
    foreign = tmp_path / ".lsg.mine.tmp"  # same pattern, not made by the converter
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep")
    try:
        convert_checkpoint(tiny_bart, output, 256, model_kwargs=SMALL_LSG)
        assert _hidden(tmp_path) == sorted([running.name, other.name, foreign.name])
    finally:
        marker.close()
    convert_checkpoint(tiny_bart, output, 256, model_kwargs=SMALL_LSG, overwrite=True)
    assert _hidden(tmp_path) == sorted([other.name, foreign.name])  # the dead run of this output is gone
    assert (foreign / "data.txt").read_text() == "keep"


def test_without_file_locks_leftovers_are_named(tiny_bart, tmp_path, monkeypatch):
    output = tmp_path / "lsg"
    work, marker = safe_output._start_work(output)
    marker.close()
    monkeypatch.setattr(safe_output, "fcntl", None)  # Windows
    with pytest.warns(ConversionWarning, match=f"{work.name} was left by an interrupted conversion"):
        convert_checkpoint(tiny_bart, output, 256, model_kwargs=SMALL_LSG)
    assert work.exists()


@pytest.fixture(scope="module")
def t5_like(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5")
    (folder / "config.json").write_text(json.dumps({"model_type": "t5", "architectures": ["T5Model"]}))
    return folder


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(architecture="BartForTokenClassification"), "unknown architecture 'BartForTokenClassification'.*"
         "BartModel, BartForConditionalGeneration, BartForSequenceClassification, BartForQuestionAnswering, "
         "BartForCausalLM"),
        (dict(max_sequence_length=0), "max_sequence_length=0.*positive"),
        (dict(max_sequence_length=-5), "max_sequence_length=-5.*positive"),
        (dict(max_sequence_length=2.5), "max_sequence_length=2.5"),
        (dict(model_kwargs="{block_size: 16"), "--model_kwargs is not valid JSON"),
        (dict(model_kwargs="[1, 2]"), "JSON object"),
        (dict(model_kwargs={"block_sise": 16}), "unknown config field.*'block_sise'"),
        (dict(model_kwargs={"sparsity_type": "fancy"}), "invalid LSG settings.*sparsity_type.*'fancy'"),
        (dict(model_kwargs={"block_size": 16, "sparsity_factor": 3}), "invalid LSG settings.*sparsity_factor"),
        (dict(model_kwargs={"num_global_tokens": 600}), "invalid LSG settings.*num_global_tokens"),
        (dict(model_kwargs={"block_size": "big"}), "invalid LSG settings.*block_size"),
        (dict(global_positional_stride=0), "global_positional_stride"),
        (dict(max_sequence_length=200, model_kwargs=SMALL_LSG), "max_sequence_length=200 is not a multiple of block_size=16.*192 or 208"),
        (dict(dtype="float64"), "dtype='float64'.*float32, float16, bfloat16"),
        (dict(resize_lsg=True), "--resize_lsg needs an LSG-BART source"),
        (dict(keep_first_global_token=True), "--keep_first_global_token needs an LSG-BART source"),
    ],
)
def test_clear_errors(kwargs, message, tiny_bart, tmp_path):
    kwargs.setdefault("max_sequence_length", 256)
    with pytest.raises(ValueError, match=message):
        convert_checkpoint(tiny_bart, tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_model_kwargs_fields_cover_the_installed_config():
    """The converter knows the config fields without importing transformers: every field of the installed
    BartConfig (and its aliases) is accepted, and the LSG fields are those that LSGBartConfig declares, with the
    types and defaults of `lsg_settings` (which the config's own checks use)."""
    import typing

    from lsg_bart.configuration_lsg_bart import LSGBartConfig
    from lsg_bart.convert_options import CONFIG_FIELDS, SET_BY_CONVERTER
    from lsg_bart.lsg_settings import LSG_FIELDS

    config = BartConfig()
    fields = {key for key in config.to_dict() if not key.startswith("_")} | set(config.attribute_map)
    fields -= {"model_type", "transformers_version"} | set(SET_BY_CONVERTER)
    assert fields <= CONFIG_FIELDS, fields - CONFIG_FIELDS
    assert not CONFIG_FIELDS & set(LSG_FIELDS)
    declared = {name: typing.get_args(kind) or (kind,) for name, kind in LSGBartConfig.__annotations__.items()}
    assert declared == {name: kinds for name, (kinds, _) in LSG_FIELDS.items()}
    assert {name: getattr(LSGBartConfig(), name) for name in LSG_FIELDS} == {
        name: default for name, (_, default) in LSG_FIELDS.items()
    }


def test_errors_about_the_source(t5_like, tmp_path):
    with pytest.raises(ValueError, match="not a BART checkpoint.*model_type='t5'"):
        convert_checkpoint(t5_like, tmp_path / "out", 4096)
    with pytest.raises(ValueError, match="cannot read a model config"):
        convert_checkpoint(tmp_path / "missing", tmp_path / "out", 4096)
    with pytest.raises(ValueError, match="cannot read a model config from 'facebook/bart-base'"):  # offline
        convert_checkpoint("facebook/bart-base", tmp_path / "out", 4096)
    with pytest.raises(ValueError, match="below the source's 512"):  # an LSG model is not shrunk
        convert_checkpoint(PARITY / "norm", tmp_path / "out", 256, resize_lsg=True)
    assert list(tmp_path.iterdir()) == []


def hub_calls(monkeypatch, metadata_error=None, cached=None):
    """Stand-ins for huggingface_hub's look-up and download, recording each call: the look-up raises
    `metadata_error` (None: refused, as no call is expected), a download from the cache gives `cached` (None: not
    in the cache), and any other download is refused. Offline mode off, as for a user with network."""
    import huggingface_hub

    calls = []

    def get_hf_file_metadata(url, **kwargs):
        calls.append(("metadata", url, kwargs))
        raise metadata_error or AssertionError(f"the Hub was asked for {url}")

    def hf_hub_download(repo_id, filename, **kwargs):
        calls.append(("download", repo_id, kwargs))
        if not kwargs.get("local_files_only"):
            raise AssertionError(f"{repo_id} downloaded from the Hub")
        if cached is None:
            raise FileNotFoundError(f"{repo_id}/{filename} is not in the local cache")
        return str(cached)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", get_hf_file_metadata)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    return calls


def convert_error(capsys, source, output):
    """The command line's error for `source`: exit status 2 and one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--initial_model", str(source), "--model_name", str(output)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Retry" not in err, err
    return err


@pytest.mark.parametrize("source", ["./tiny-bart", "../tiny-bart", "/no/such/folder", "~/models/bart",
                                    "runs/demo-out/tiny-bart", "tiny--bart", "C:\\models\\bart"])
def test_a_source_that_can_only_be_a_path_is_refused_without_the_hub(source, tmp_path, monkeypatch, capsys):
    """Names that are no Hub id (they start with `/`, `./`, `../` or `~`, hold a backslash or two `/`, ...) and no
    local folder are refused at once: the Hub is never asked."""
    calls = hub_calls(monkeypatch)
    monkeypatch.chdir(tmp_path)
    err = convert_error(capsys, source, tmp_path / "out")
    assert err == f"lsg-bart-convert: error: cannot read a model config from {source!r}: no such local folder\n"
    assert calls == []
    (tmp_path / "file.json").write_text("{}")
    assert "'file.json': it is a file, not a checkpoint folder" in convert_error(capsys, "file.json", tmp_path / "out")


def test_a_hub_id_without_network_is_refused_after_one_short_look_up(tiny_bart, tmp_path, monkeypatch, capsys):
    """`demo-out/tiny-bartt` (a typo) is a valid Hub id: without network, one look-up of at most `HUB_TIMEOUT`
    seconds (no retries) and the local cache answer, in one line that names the folder meant."""
    from lsg_bart.convert_options import HUB_TIMEOUT

    calls = hub_calls(monkeypatch, metadata_error=ConnectionError("[Errno -2] Name or service not known"))
    monkeypatch.chdir(tiny_bart.parent.parent)
    typo = f"{tiny_bart.parent.name}/{tiny_bart.name}t"
    err = convert_error(capsys, typo, tmp_path / "out")
    assert err.startswith(
        f"lsg-bart-convert: error: cannot read a model config from {typo!r}: no such local folder (did you mean "
        f"'{tiny_bart.parent.name}/{tiny_bart.name}'?), and as a Hub model id: the Hub (https://"
    ), err
    assert "cannot be reached (ConnectionError: [Errno -2] Name or service not known), and it is not in the local " \
        "cache" in err
    [(kind, url, kwargs), (download, repo_id, download_kwargs)] = calls
    assert kind == "metadata" and url.endswith(f"/{typo}/resolve/main/config.json") and kwargs["timeout"] == HUB_TIMEOUT
    assert download == "download" and repo_id == typo and download_kwargs["local_files_only"] is True


def test_a_cached_hub_source_without_network_is_read_from_the_cache(tiny_bart, monkeypatch):
    from lsg_bart.convert_options import ConvertOptions, plan_conversion

    hub_calls(monkeypatch, metadata_error=TimeoutError("timed out"), cached=tiny_bart / "config.json")
    plan = plan_conversion(ConvertOptions("someone/tiny-bart", "out", 256, model_kwargs=SMALL_LSG))
    assert plan.local_files_only  # the weights, tokenizer and generation config too: no retries for each
    assert plan.source_config == json.loads((tiny_bart / "config.json").read_text())


def test_a_hub_that_answers_no_is_one_line(monkeypatch, tmp_path, capsys):
    from huggingface_hub.errors import RepositoryNotFoundError

    class NotFound(RepositoryNotFoundError):  # without the HTTP response, whose class depends on the release
        def __init__(self, message):
            Exception.__init__(self, message)

    calls = hub_calls(monkeypatch, metadata_error=NotFound("404 Client Error. Repository Not Found for url: x/y"))
    err = convert_error(capsys, "x/y", tmp_path / "out")
    assert "'x/y': no such local folder, and as a Hub model id: 404 Client Error. Repository Not Found" in err
    assert [call[0] for call in calls] == ["metadata"]


def test_an_unreachable_hub_answers_in_one_line_with_the_real_client(tmp_path):
    """The same, through huggingface_hub itself, in a process with offline mode off and a Hub address that refuses
    connections: one line, and none of the client's retry messages."""
    env = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    command = [sys.executable, "-m", "lsg_bart.convert", "--initial_model", "someone/no-such-bart", "--model_name",
               "out"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(
        "lsg-bart-convert: error: cannot read a model config from 'someone/no-such-bart': no such local folder, and "
        "as a Hub model id: the Hub (http://127.0.0.1:9) cannot be reached ("
    ), result.stderr
    assert result.stderr.endswith("and it is not in the local cache\n") and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_dtype(dtype, tiny_bart, tmp_path):
    out = convert_checkpoint(tiny_bart, tmp_path / dtype, 256, model_kwargs=SMALL_LSG, dtype=dtype)
    with safe_open(out / "model.safetensors", "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {f"torch.{dtype}"}
    assert json.loads((out / "config.json").read_text())["dtype"] == dtype
    model = LSGBartForConditionalGeneration.from_pretrained(out, dtype=getattr(torch, dtype))
    full = LSGBartForConditionalGeneration.from_pretrained(convert_checkpoint(
        tiny_bart, tmp_path / "f32", 256, model_kwargs=SMALL_LSG))
    torch.testing.assert_close(model.model.encoder.global_embeddings.weight.float(),
                               full.model.encoder.global_embeddings.weight, atol=1e-2, rtol=1e-2)


# ---------------------------------------------------------------------------------------------------------------
# 1. Command line, script, push to the Hub
# ---------------------------------------------------------------------------------------------------------------

FLAGS = ["--initial_model", "--model_name", "--max_sequence_length", "--architecture", "--random_global_init",
         "--global_positional_stride", "--keep_first_global_token", "--resize_lsg", "--model_kwargs", "--seed",
         "--run_test", "--push_to_hub", "--private", "--token", "--overwrite", "--dtype"]


def test_cli_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in FLAGS:
        assert flag in text, flag
    assert "BartForCausalLM" in text and "float16" in text


def test_top_level_script(tmp_path):
    # `python -m lsg_bart.convert` and the console script run the same `main`.
    result = subprocess.run([sys.executable, str(REPO / "convert_checkpoint.py"), "--help"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--max_sequence_length" in result.stdout and "--push_to_hub" in result.stdout


def test_cli_converts_like_the_library(tiny_bart, tmp_path, capsys):
    options = ["--max_sequence_length", "384", "--model_kwargs", json.dumps(SMALL_LSG), "--seed", "9",
               "--global_positional_stride", "32"]
    assert main(["--initial_model", str(tiny_bart), "--model_name", str(tmp_path / "cli"), *options]) == 0
    assert "Done:" in capsys.readouterr().out
    library = convert_checkpoint(tiny_bart, tmp_path / "lib", 384, model_kwargs=SMALL_LSG, seed=9,
                                 global_positional_stride=32)
    cli, lib = weights(tmp_path / "cli"), weights(library)
    assert set(cli) == set(lib) and all(torch.equal(cli[k], lib[k]) for k in cli)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--architecture", "Nope"], "unknown architecture 'Nope'"),
        (["--max_sequence_length", "-1"], "positive"),
        (["--model_kwargs", "{oops"], "not valid JSON"),
        (["--model_kwargs", '{"sparsity_type": "fancy"}'], "invalid LSG settings"),
        (["--dtype", "int8"], "invalid choice"),
    ],
)
def test_cli_errors_exit_2_on_one_line(arguments, message, tiny_bart, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--initial_model", str(tiny_bart), "--model_name", str(tmp_path / "out"), *arguments])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("lsg-bart-convert: error: ")
    assert len(err.splitlines()) == 1, err  # no usage block: that is for --help
    assert not (tmp_path / "out").exists()


ANSWERS_BEFORE_HEAVY_IMPORTS = r"""
import contextlib, importlib.abc, io, json, os, sys


class Unimportable(importlib.abc.MetaPathFinder):  # as if torch and transformers were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "safetensors"):
            raise ImportError(f"{name} is blocked in this process")


sys.meta_path.insert(0, Unimportable())
os.makedirs("used/notes")
os.makedirs("src")
with open("src/config.json", "w") as f:  # a BART source: its config is all the checks read
    json.dump({"model_type": "bart", "architectures": ["BartForConditionalGeneration"],
               "max_position_embeddings": 1024}, f)
from lsg_bart.convert import convert_checkpoint, main

results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            if argv[0] == "python":  # the Python API: convert_checkpoint(*args, **kwargs)
                convert_checkpoint(*argv[1], **argv[2])
            else:
                main(argv)
        except SystemExit as exit:
            results.append({"code": exit.code, "message": err.getvalue()})
        except (ValueError, FileExistsError) as error:
            results.append({"code": type(error).__name__, "message": str(error)})
        else:
            results.append({"code": "no error", "message": err.getvalue()})
print(json.dumps(results))
print(sorted(name for name in ("torch", "transformers", "safetensors") if name in sys.modules))
"""

SOURCE = ["--initial_model", "src", "--model_name", "y"]
# Each argument error, and the start of its one-line message (after "lsg-bart-convert: error: ").
ARGUMENT_ERRORS = [
    (["--initial_model", "x"], "the following arguments are required: --model_name"),
    (["--initial_model", "x", "--model_name", "."], "--model_name '.' is the current directory ({cwd})"),
    (["--initial_model", "x", "--model_name", "used"], "output folder 'used' is not empty; pass --overwrite to "
     "replace it"),
    (["--initial_model", "x", "--model_name", "used", "--overwrite"], "--overwrite would remove everything in "
     "'used' (notes/), but notes/ is not part of a BART / LSG-BART checkpoint"),
    (SOURCE + ["--architecture", "BartForMagic"], "unknown architecture 'BartForMagic' (--architecture)"),
    (SOURCE + ["--model_kwargs", "{oops"], "--model_kwargs is not valid JSON (Expecting property name enclosed in "
     "double quotes: line 1 column 2 (char 1)): '{oops'"),
    (SOURCE + ["--model_kwargs", "[1, 2]"], "--model_kwargs must be a JSON object"),
    (SOURCE + ["--model_kwargs", '{"sparsity_typ": "norm"}'], "--model_kwargs has unknown config field(s) "
     "'sparsity_typ' (did you mean 'sparsity_type'?)"),
    (SOURCE + ["--model_kwargs", '{"max_position_embeddings": 512}'], "--model_kwargs sets "
     "'max_position_embeddings', which the converter sets from --max_sequence_length"),
    (SOURCE + ["--model_kwargs", '{"sparsity_type": "fancy"}'], "invalid LSG settings: LSGBartConfig: invalid "
     "`sparsity_type`='fancy'"),
    (SOURCE + ["--model_kwargs", '{"block_size": 16, "sparsity_factor": 3}'], "invalid LSG settings: "
     "LSGBartConfig: invalid `sparsity_factor`=3"),
    (SOURCE + ["--max_sequence_length", "0"], "invalid max_sequence_length=0"),
    (SOURCE + ["--max_sequence_length", "-3"], "invalid max_sequence_length=-3"),
    (SOURCE + ["--max_sequence_length", "2.5"], "argument --max_sequence_length: invalid int value: '2.5'"),
    (SOURCE + ["--max_sequence_length", "200", "--model_kwargs", '{"block_size": 16}'], "invalid LSG settings: "
     "max_sequence_length=200 is not a multiple of block_size=16"),
    (SOURCE + ["--max_sequence_length", "1000"], "invalid LSG settings: max_sequence_length=1000 is not a multiple "
     "of block_size=128"),  # the config's default block size
    (SOURCE + ["--global_positional_stride", "0"], "invalid global_positional_stride=0"),
    (SOURCE + ["--dtype", "float64"], "argument --dtype: invalid choice: 'float64'"),
    (SOURCE + ["--resize_lsg"], "--resize_lsg needs an LSG-BART source"),
    (["--initial_model", "used", "--model_name", "y"], "cannot read a model config from 'used'"),
    # The Python API: the same checks, with the options named as Python arguments.
    (["python", ["src", "used"], {}], "output folder 'used' is not empty; pass overwrite=True to replace it"),
    (["python", ["src", "used"], {"overwrite": True}], "overwrite=True would remove everything in 'used'"),
    (["python", ["src", "y"], {"dtype": "float64"}], "invalid dtype='float64'"),
    (["python", ["src", "y", 4000], {"model_kwargs": {"block_size": 64}}], "invalid LSG settings: "
     "max_sequence_length=4000 is not a multiple of block_size=64, so an input of that length would be padded past "
     "the position table; use 3968 or 4032"),
]


def test_help_and_argument_errors_answer_before_heavy_imports(tmp_path):
    """`--help` and every argument error (options, output path, output folder, LSG settings against the source's
    config) answer with torch and transformers unimportable: they take seconds to load."""
    cases = [["--help"]] + [argv for argv, _ in ARGUMENT_ERRORS]
    result = subprocess.run([sys.executable, "-c", ANSWERS_BEFORE_HEAVY_IMPORTS, json.dumps(cases)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    *help_lines, results, imported = result.stdout.strip().splitlines()
    assert imported == "[]"
    help_text = " ".join(" ".join(help_lines).split())
    assert "Costs 5 loads of the checkpoint and one full-length encoder pass" in help_text  # --run_test's cost
    results = json.loads(results)
    assert results[0] == {"code": 0, "message": ""}
    for (argv, expected), got in zip(ARGUMENT_ERRORS, results[1:]):
        expected = expected.replace("{cwd}", str(tmp_path.resolve()))
        if argv[0] == "python":
            assert got["code"] in ("ValueError", "FileExistsError") and got["message"].startswith(expected), got
        else:
            assert got["code"] == 2, got
            assert got["message"].startswith(f"lsg-bart-convert: error: {expected}"), (argv, got)
            assert len(got["message"].splitlines()) == 1, got


def test_cli_refuses_non_empty_output(tiny_bart, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["--initial_model", str(tiny_bart), "--model_name", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err


def test_push_to_hub_uploads_the_finished_folder(tiny_bart, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
            calls.append(("create_repo", repo_id, private, exist_ok))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None):
            folder = Path(folder_path)
            calls.append(("upload_folder", repo_id, folder.name, sorted(p.name for p in folder.iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["--initial_model", str(tiny_bart), "--model_name", str(tmp_path / "lsg-tiny"),
                 "--max_sequence_length", "256", "--model_kwargs", json.dumps(SMALL_LSG),
                 "--push_to_hub", "me/lsg-tiny", "--private", "--token", "hf_secret"]) == 0
    assert calls[0] == ("init", "hf_secret")
    assert calls[1] == ("create_repo", "me/lsg-tiny", True, True)
    assert calls[2][:3] == ("upload_folder", "me/lsg-tiny", "lsg-tiny")  # the published folder, not a temporary one
    assert {"model.safetensors", "config.json", "README.md", "modeling_lsg_bart.py"} <= set(calls[2][3])

    # A failed upload keeps the finished local folder and says so, without a traceback.
    def offline(self, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(FakeApi, "upload_folder", offline)
    assert main(["--initial_model", str(tiny_bart), "--model_name", str(tmp_path / "second"),
                 "--max_sequence_length", "256", "--model_kwargs", json.dumps(SMALL_LSG),
                 "--push_to_hub", "me/lsg-tiny"]) == 1
    err = capsys.readouterr().err
    assert "complete in" in err and "no network" in err and "Traceback" not in err
    assert (tmp_path / "second" / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------------
# Done when: a facebook/bart-base-sized model converts in under 2 minutes, and the 16384 checkpoint runs 16384 tokens
# ---------------------------------------------------------------------------------------------------------------

# config.json of facebook/bart-base, verbatim
BART_BASE_CONFIG = {
    "_name_or_path": "bart-base", "activation_dropout": 0.1, "activation_function": "gelu",
    "add_bias_logits": False, "add_final_layer_norm": False, "architectures": ["BartModel"],
    "attention_dropout": 0.1, "bos_token_id": 0, "classif_dropout": 0.1, "classifier_dropout": 0.0,
    "d_model": 768, "decoder_attention_heads": 12, "decoder_ffn_dim": 3072, "decoder_layerdrop": 0.0,
    "decoder_layers": 6, "decoder_start_token_id": 2, "dropout": 0.1, "early_stopping": True,
    "encoder_attention_heads": 12, "encoder_ffn_dim": 3072, "encoder_layerdrop": 0.0, "encoder_layers": 6,
    "eos_token_id": 2, "forced_bos_token_id": 0, "forced_eos_token_id": 2, "gradient_checkpointing": False,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}, "init_std": 0.02, "is_encoder_decoder": True,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}, "max_position_embeddings": 1024, "model_type": "bart",
    "no_repeat_ngram_size": 3, "normalize_before": False, "normalize_embedding": True, "num_beams": 4,
    "num_hidden_layers": 6, "pad_token_id": 1, "scale_embedding": False,
    "task_specific_params": {
        "summarization": {"length_penalty": 1.0, "max_length": 128, "min_length": 12, "num_beams": 4},
        "summarization_cnn": {"length_penalty": 2.0, "max_length": 142, "min_length": 56, "num_beams": 4},
        "summarization_xsum": {"length_penalty": 1.0, "max_length": 62, "min_length": 11, "num_beams": 6},
    },
    "torch_dtype": "float32", "transformers_version": "4.12.0.dev0", "use_cache": True, "vocab_size": 50265,
}


@pytest.mark.slow
def test_bart_base_size_converts_and_runs_16384_tokens(tmp_path, capsys):
    source = tmp_path / "bart-base-random"
    torch.manual_seed(0)
    BartModel(BartConfig.from_dict(BART_BASE_CONFIG)).save_pretrained(source)
    (source / "config.json").write_text(json.dumps(BART_BASE_CONFIG, indent=2))  # the exact file
    build_tokenizer(model_max_length=1024).save_pretrained(source)  # BART's special ids 0..4

    assert main(["--initial_model", str(source), "--model_name", str(tmp_path / "lsg-16384"),
                 "--max_sequence_length", "16384", "--architecture", "BartForConditionalGeneration"]) == 0

    model = LSGBartForConditionalGeneration.from_pretrained(tmp_path / "lsg-16384").eval()
    assert model.config.d_model == 768 and model.config.max_position_embeddings == 16384
    assert model.model.encoder.embed_positions.weight.shape == (16386, 768)
    assert len(model.model.encoder.layers) == 6
    # The 16,384 tokens go through the first encoder layer only: the others compute the same on the same shapes,
    # at about 2 s each here.
    model.model.encoder.layers = model.model.encoder.layers[:1]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50265, (1, 16384), generator=generator)
    ids[0, 0], ids[0, -1] = 0, 2
    with torch.inference_mode():
        outputs = model(input_ids=ids, decoder_input_ids=torch.tensor([[2, 0]]))
    assert outputs.encoder_last_hidden_state.shape == (1, 16385, 768)  # 1 global token + 16384
    assert outputs.logits.shape == (1, 2, 50265)
    assert torch.isfinite(outputs.encoder_last_hidden_state).all() and torch.isfinite(outputs.logits).all()
