"""Small BART models and tokenizers built locally, for the demo, the tests and the examples (no network)."""

import random

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

from .tokenizer_files import save_tokenizer

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, as in facebook/bart-*

_WORDS = (
    "the model reads long documents and writes short summaries of reports papers and legal text with "
    "attention over local blocks sparse tokens and global tokens while the encoder keeps memory linear in "
    "length so that sixteen thousand tokens fit on one machine without trouble"
).split()


def sample_text(num_words, seed=0):
    """Deterministic English-like text of `num_words` words."""
    rng = random.Random(seed)
    words = [rng.choice(_WORDS) for _ in range(num_words)]
    sentences = [" ".join(words[i : i + 12]).capitalize() + "." for i in range(0, num_words, 12)]
    return " ".join(sentences)


def build_tokenizer(vocab_size=400, model_max_length=1024):
    """A byte-level BPE tokenizer with BART's special tokens, trained in a second on `sample_text`."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([sample_text(2000, seed) for seed in range(5)], trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=model_max_length,
        # What BART's tokenizer returns (transformers 4.x would add token_type_ids, which BART does not take).
        model_input_names=["input_ids", "attention_mask"],
    )


def build_tiny_bart(path=None, d_model=32, layers=2, heads=4, ffn_dim=64, max_position_embeddings=1024, seed=0):
    """A randomly initialised `BartForConditionalGeneration` with its tokenizer; saved to `path` when given."""
    tokenizer = build_tokenizer(model_max_length=max_position_embeddings)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        max_position_embeddings=max_position_embeddings,
    )
    torch.manual_seed(seed)
    model = BartForConditionalGeneration(config)
    if path is not None:
        model.save_pretrained(path)
        save_tokenizer(tokenizer, path)  # with a class name that transformers 4.46 to the newest read
    return model, tokenizer
