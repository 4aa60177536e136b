"""The LSG settings of an LSG-BART config: their types, defaults, allowed values and how they must agree.

Standard library only: `LSGBartConfig` checks its fields with these rules, and the converter checks a request with
the same rules before torch and transformers are imported (they take seconds to load).
"""

# The names of the sparse selectors (lsg_attention.SELECTORS) and of the attention kernels (lsg_kernels.KERNELS):
# those tables are keyed by these names and refuse to load if they differ from them.
SPARSITY_TYPES = ("none", "norm", "pooling", "lsh", "stride", "block_stride", "bos_pooling")
KERNEL_NAMES = ("reference", "flex", "eager", "sdpa", "cpu_two_part", "cpu_bf16_scores")
# "auto" lets the model choose a kernel per forward pass.
LSG_KERNELS = ("auto", *KERNEL_NAMES)
MAX_GLOBAL_TOKENS = 512
# Each LSH round is another pass of hashing and merging over every key: a few rounds already merge what they can.
MAX_LSH_PRE_ROUNDS = 16
# `torch.Generator.manual_seed` takes seeds below 2**64; each layer adds its index to the seed.
MAX_LSH_SEED = 2**63 - 1

# Each LSG field: the types it accepts (an int is no bool here) and its default. `LSGBartConfig` declares the same
# fields with these defaults.
LSG_FIELDS = {
    "adaptive": ((bool,), True),
    "block_size": ((int,), 128),
    "sparse_block_size": ((int,), 128),
    "sparsity_factor": ((int,), 2),
    "sparsity_type": ((str,), "norm"),
    "num_global_tokens": ((int,), 1),
    "mask_first_token": ((bool,), False),
    "pass_global_tokens_to_decoder": ((bool,), True),
    "pool_with_global": ((bool,), True),
    "lsh_num_pre_rounds": ((int,), 1),
    "lsh_seed": ((int, type(None)), None),
    "lsg_kernel": ((str,), "auto"),
}
LSG_DEFAULTS = {name: default for name, (_, default) in LSG_FIELDS.items()}
KIND_NAMES = {bool: "true or false", int: "an integer", str: "a string", type(None): "None"}


def named_table(names, table):
    """`table` (a dict), after checking that its keys are exactly `names`: the code's tables of selectors and kernels
    cannot drift from the names that configs accept."""
    if set(table) != set(names):
        raise ImportError(f"LSG-BART: a table holds {sorted(table)} but the settings name {sorted(names)}")
    return table


def one_of(choices):
    """A field check: the value must be one of `choices`."""
    return lambda value: None if value in choices else f"expected one of {', '.join(choices)}"


def at_least(lowest, allowed):
    """A field check: the value must be `lowest` or more (`allowed` says what is)."""
    return lambda value: None if value >= lowest else allowed


# What each LSG field allows on its own (None when `value` is fine); `check_lsg_settings` adds how they must agree.
FIELD_CHECKS = {
    "sparsity_type": one_of(SPARSITY_TYPES),
    "lsg_kernel": one_of(LSG_KERNELS),
    "block_size": at_least(1, "expected a positive integer"),
    "sparse_block_size": at_least(0, "expected 0 (no sparse attention) or a positive integer"),
    "sparsity_factor": at_least(1, "expected a positive integer"),
    "num_global_tokens": lambda value: (
        None if 1 <= value <= MAX_GLOBAL_TOKENS else f"expected an integer from 1 to {MAX_GLOBAL_TOKENS}"
    ),
    "lsh_num_pre_rounds": lambda value: (
        None if 0 <= value <= MAX_LSH_PRE_ROUNDS else f"expected an integer from 0 to {MAX_LSH_PRE_ROUNDS}"
    ),
    "lsh_seed": lambda value: (
        None if value is None or 0 <= value <= MAX_LSH_SEED else "expected None or an integer from 0 to 2**63 - 1"
    ),
}

# The LSG fields bounded by the model's length: a block (or sparse window) longer than the whole input table would
# only allocate padding, and a large enough one cannot be allocated at all.
BOUNDED_BY_POSITIONS = ("block_size", "sparse_block_size")


def is_exactly(value, kind):
    """Whether `value` is a `kind`, where an int is no bool and a bool no int."""
    return isinstance(value, kind) and isinstance(value, bool) == (kind is bool)


def field_problem(field, value):
    """What is wrong with `value` for the LSG field `field` on its own (type, range, name), or None."""
    kinds = LSG_FIELDS[field][0]
    if not any(value is None if kind is type(None) else is_exactly(value, kind) for kind in kinds):
        return "expected " + " or ".join(KIND_NAMES[kind] for kind in kinds)
    check = FIELD_CHECKS.get(field)
    return check(value) if check is not None else None


def check_field(field, value):
    """`ValueError` naming the field, its value and what is allowed, if `value` is invalid for `field` on its own."""
    problem = field_problem(field, value)
    if problem:
        raise ValueError(f"LSGBartConfig: invalid `{field}`={value!r}; {problem}.")


def positions_problem(field, value, max_position_embeddings):
    """What is wrong with `value` for `field` against the model's `max_position_embeddings`, or None."""
    positions = max_position_embeddings
    if field in BOUNDED_BY_POSITIONS and is_exactly(positions, int) and is_exactly(value, int) and value > positions:
        return f"it must be at most max_position_embeddings={positions}"
    return None


def fits_in_blocks(length, block_size):
    """Whether an input of `length` tokens fits the position table once padded: inputs longer than two blocks are
    padded to a multiple of `block_size`, so a table of `length` rows must then be such a multiple."""
    return length <= 2 * block_size or length % block_size == 0


def nearest_block_sizes(positions, block_size, factor):
    """The block sizes that divide `positions` and are multiples of `factor` just below and above `block_size`."""
    valid = [size for size in range(factor, positions + 1, factor) if positions % size == 0]
    below = [size for size in valid if size < block_size][-1:]
    above = [size for size in valid if size > block_size][:1]
    return below + above


def check_lsg_settings(settings, max_position_embeddings=None):
    """`ValueError` naming the field, its value and what is allowed, for any LSG field of `settings` (a mapping with
    every LSG field) that is invalid on its own, then for settings that do not fit together."""

    def fail(field, allowed):
        raise ValueError(f"LSGBartConfig: invalid `{field}`={settings[field]!r}; {allowed}.")

    for field in LSG_FIELDS:
        check_field(field, settings[field])
    for field in BOUNDED_BY_POSITIONS:
        problem = positions_problem(field, settings[field], max_position_embeddings)
        if problem:
            fail(field, problem)
    block_size, factor, sparsity_type = settings["block_size"], settings["sparsity_factor"], settings["sparsity_type"]
    if block_size % factor != 0:
        fail("sparsity_factor", f"it must divide block_size={block_size}")
    if sparsity_type in ("norm", "lsh") and settings["sparse_block_size"] > 0:
        chunk = min(block_size, settings["sparse_block_size"])
        if block_size % chunk != 0 or chunk % factor != 0:
            fail(
                "sparse_block_size",
                f"with sparsity_type={sparsity_type!r}, min(block_size, sparse_block_size) must divide "
                f"block_size={block_size} and be a multiple of sparsity_factor={factor}",
            )
    positions = max_position_embeddings
    if is_exactly(positions, int) and not fits_in_blocks(positions, block_size):
        fail(
            "block_size",
            f"it must divide max_position_embeddings={positions} (the nearest valid values are "
            f"{' and '.join(map(str, nearest_block_sizes(positions, block_size, factor)))})",
        )
