"""The converter's `--run_test`: load a checkpoint folder with each Auto class, as its users will, and run an input
through each model.

torch and transformers are imported when the test runs, so that importing this module costs nothing.
"""

import logging
import time
from pathlib import Path

logger = logging.getLogger("lsg_bart.convert")

# Inputs of the Auto classes other than the checkpoint's own: long enough for the LSG path (more than 2 blocks).
SHORT_TEST_BLOCKS = 4
# Classes whose decoder reads its own short input in the test: a full-length decoder pass, and full-length logits
# over the vocabulary, would cost more than the encoder pass that the test is for. (The classification and
# question-answering heads read the decoder's states of the whole input.)
SHORT_DECODER_CLASSES = ("AutoModel", "AutoModelForSeq2SeqLM")
# Auto classes that load an encoder-decoder checkpoint (all of them) and a decoder-only one.
ENCODER_DECODER_AUTO_CLASSES = (
    "AutoModel",
    "AutoModelForSeq2SeqLM",
    "AutoModelForSequenceClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForCausalLM",
)
DECODER_AUTO_CLASSES = ("AutoModelForCausalLM",)


def _test_inputs(length, config, tokenizer, generator):
    """One row of `length` random ids that are no special token, between bos and eos."""
    import torch

    special = {config.bos_token_id, config.eos_token_id, config.pad_token_id, config.decoder_start_token_id}
    if tokenizer is not None:
        special |= set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(config.vocab_size) if i not in special])
    ids = allowed[torch.randint(len(allowed), (1, length), generator=generator)]
    if length >= 2:
        ids[0, 0], ids[0, -1] = config.bos_token_id, config.eos_token_id
    return ids


def auto_classes(config):
    """The Auto classes to test, the checkpoint's own first (it gets the full-length input), and that class."""
    architecture = (config.architectures or [None])[0]
    own = next((auto for auto, target in config.auto_map.items() if target.split(".")[-1] == architecture), None)
    classes = ENCODER_DECODER_AUTO_CLASSES if config.is_encoder_decoder else DECODER_AUTO_CLASSES
    return sorted(classes, key=lambda name: name != own), own


def run_checkpoint_test(folder, max_sequence_length=None, seed=0):
    """Load `folder` with AutoTokenizer and each Auto class (`trust_remote_code=True`) and run an input through each
    model: `max_sequence_length` tokens (default: the config's) through the class of the checkpoint's own
    architecture, and `SHORT_TEST_BLOCKS * block_size` tokens (at most that length) through the others, which share
    the encoder and decoder and differ only in their heads. The decoders of `SHORT_DECODER_CLASSES` read two tokens.
    Logs a line before and after each class; `RuntimeError` when an output is not what it should be.

    Returns `{auto class name: seconds}`.
    """
    import torch
    import transformers

    folder = str(folder)
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    length = max_sequence_length or config.max_position_embeddings
    tokenizer = None
    if (Path(folder) / "tokenizer_config.json").exists():
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        if tokenizer.model_max_length != length:
            raise RuntimeError(f"tokenizer model_max_length is {tokenizer.model_max_length}, expected {length}")
    generator = torch.Generator().manual_seed(seed)
    short = min(length, SHORT_TEST_BLOCKS * config.block_size)
    inputs = {length: _test_inputs(length, config, tokenizer, generator)}
    inputs[short] = inputs[length][:, :short].clone()
    inputs[short][0, -1] = config.eos_token_id
    classes, own = auto_classes(config)
    timings = {}
    for index, auto_name in enumerate(classes, 1):
        tokens = length if auto_name == own or len(classes) == 1 else short
        input_ids = inputs[tokens]
        logger.info("  test %d/%d %s: loading, then a %d-token input ...", index, len(classes), auto_name, tokens)
        start = time.perf_counter()
        auto_class = getattr(transformers, auto_name)
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # heads a checkpoint lacks are expected here
        try:
            model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
        finally:
            transformers.logging.set_verbosity(verbosity)
        decoder = {}
        if auto_name in SHORT_DECODER_CLASSES and config.is_encoder_decoder:
            decoder["decoder_input_ids"] = torch.tensor([[config.decoder_start_token_id, config.bos_token_id]])
        with torch.inference_mode():
            outputs = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **decoder)
        main = outputs[0]
        if not torch.isfinite(main.float()).all():
            raise RuntimeError(f"{auto_name}: non-finite outputs on a {tokens}-token input")
        encoder_states = getattr(outputs, "encoder_last_hidden_state", None)
        if encoder_states is not None:
            expected = tokens + (config.num_global_tokens if config.pass_global_tokens_to_decoder else 0)
            if encoder_states.shape[1] != expected:
                raise RuntimeError(
                    f"{auto_name}: encoder output has {encoder_states.shape[1]} positions, expected {expected}"
                )
        timings[auto_name] = time.perf_counter() - start
        logger.info("  test %d/%d %s (%s): %d tokens -> %s in %.1fs", index, len(classes), auto_name,
                    type(model).__name__, tokens, tuple(main.shape), timings[auto_name])
        del model, outputs
    return timings
