"""Tokenizer folders that every supported transformers reads, 4.46 to the newest.

transformers 5 records a generic fast tokenizer's class as `TokenizersBackend` in tokenizer_config.json, a name that
transformers 4 does not know (`ValueError: Tokenizer class TokenizersBackend does not exist`). `save_tokenizer`
records instead a class that both read: `BartTokenizer` when it tokenizes as the saved tokenizer does (BART's
tokenizers, and this package's tiny one), so that a tokenizer loaded and saved again under transformers 5 (by
`Trainer`, say) keeps a name transformers 4 reads; otherwise `PreTrainedTokenizerFast`, which reads tokenizer.json as
it is under every version.

transformers 4 takes the tokenizer class from tokenizer_config.json before it reads config.json, so it loads the
tokenizer of an LSG-BART folder with `AutoTokenizer.from_pretrained(folder)`, without remote code and without asking
about it. transformers 5 reads config.json first, whose `lsg_bart` model needs `trust_remote_code=True` (or
`import lsg_bart`).
"""

import json
from pathlib import Path

TOKENIZER_CONFIG = "tokenizer_config.json"
# Class names that transformers 5 writes and transformers 4 cannot resolve.
NEWER_CLASS_NAMES = ("TokenizersBackend", "PythonBackend", "SentencePieceBackend")
# What both major versions resolve: BART's own class, and the generic one (TokenizersBackend under transformers 5).
BART_CLASS, GENERIC_CLASS = "BartTokenizer", "PreTrainedTokenizerFast"
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "unk_token_id", "sep_token_id", "pad_token_id", "cls_token_id",
               "mask_token_id")
# Texts on which `BartTokenizer` must give the saved tokenizer's ids to stand for it.
PROBES = (
    "The model reads long documents and writes short summaries.",
    " a leading space,  two spaces,\ttabs\nand new lines\n\n",
    "Ünïcödé, emoji 🙂, CJK 長い文書 and digits 12345.",
    "<s> special <mask> tokens </s> <pad> <unk> inside the text",
    "a" * 40,
    "",
)


def save_tokenizer(tokenizer, folder):
    """`tokenizer.save_pretrained(folder)`, with a tokenizer class in tokenizer_config.json that transformers 4.46 to
    the newest all read. Returns the class name recorded."""
    tokenizer.save_pretrained(folder)
    return make_portable(tokenizer, folder)


def make_portable(tokenizer, folder):
    """Replace a class name in `folder`'s tokenizer_config.json that only transformers 5 knows (what `tokenizer`
    was saved with) by `BartTokenizer` if it tokenizes as `tokenizer` does, else by `PreTrainedTokenizerFast`; and
    an alias of `BartTokenizer` under the installed transformers (transformers 5 saves BART's tokenizer as
    `RobertaTokenizer`) by `BartTokenizer`. Returns the class name recorded."""
    path = Path(folder) / TOKENIZER_CONFIG
    settings = json.loads(path.read_text(encoding="utf-8"))
    recorded = settings.get("tokenizer_class")
    if recorded in NEWER_CLASS_NAMES:
        name = BART_CLASS if _tokenizes_alike(tokenizer, folder) else GENERIC_CLASS
    elif recorded != BART_CLASS and _is_bart_class(recorded):
        name = BART_CLASS
    else:
        return recorded
    settings["tokenizer_class"] = name
    path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return name


def _is_bart_class(name):
    """Whether `name` is BART's tokenizer class under the installed transformers."""
    import transformers

    return isinstance(name, str) and getattr(transformers, name, None) is transformers.BartTokenizer


def _tokenizes_alike(tokenizer, folder):
    """Whether the folder, read as a `BartTokenizer`, has `tokenizer`'s vocabulary, special tokens, inputs and ids."""
    from transformers import BartTokenizer
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # not the class it was saved with: transformers says so, and we know
    try:
        candidate = BartTokenizer.from_pretrained(str(folder))
    except Exception:  # files that BART's class cannot read
        return False
    finally:
        logging.set_verbosity(verbosity)
    if len(candidate) != len(tokenizer) or candidate.model_input_names != tokenizer.model_input_names:
        return False
    if any(getattr(candidate, name) != getattr(tokenizer, name) for name in SPECIAL_IDS):
        return False
    inputs = [(text,) for text in PROBES] + [PROBES[:2]]  # single texts, and a pair
    return all(_ids(candidate, *texts) == _ids(tokenizer, *texts) for texts in inputs)


def _ids(tokenizer, *texts):
    return [tokenizer(*texts)["input_ids"], tokenizer(*texts, add_special_tokens=False)["input_ids"]]
