"""A tiny LSG encoder learns a dependency that spans more than 1,000 tokens, which local attention cannot see.

The task, made here: 2,048-token inputs whose first half is written in one of two "topics" (two disjoint sets of
64 token ids) and whose second half is a single repeated QUERY token. Every position of blocks 40..63 (tokens
1,280..2,047) must name the topic.

Why a model that only sees the local window cannot solve it: with blocks of `bs` = 32 tokens, a query block attends
to 3 * bs = 96 tokens (its block and the two neighbours), so after the 2 encoder layers a position depends only on
the 5 blocks around it. For a target in block 40 or later that is tokens 1,216 and beyond: QUERY tokens only,
the same in every example whatever the topic. A local-only model therefore gives the same prediction for both
topics and its expected loss is at least ln 2 (balanced labels). The LSG model can route the topic through its
global tokens (which attend to the whole input); its loss must fall under half its starting value (~0.7 -> <0.36),
below what any local-only model can reach.

Why the encoder and not a whole seq2seq model: the decoder's cross-attention is full attention over every encoder
output, so a seq2seq (or BART classification) model could solve any such task with a purely local encoder; only
the encoder's own outputs show what LSG attention carries over long distances.
"""

import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from lsg_bart import LSGBartModel

from conftest import tiny_config

LENGTH, BLOCK, LAYERS = 2048, 32, 2
TOPICS, WORDS_PER_TOPIC = 2, 64
QUERY = 5
FIRST_TARGET = 40 * BLOCK  # blocks 40..63
MAX_STEPS, BATCH = 150, 4


def make_batch(size, generator):
    """(input_ids, topic): first half drawn from the topic's words, second half QUERY tokens."""
    topic = torch.randint(0, TOPICS, (size,), generator=generator)
    words = torch.randint(0, WORDS_PER_TOPIC, (size, LENGTH // 2), generator=generator)
    input_ids = torch.full((size, LENGTH), QUERY)
    input_ids[:, : LENGTH // 2] = 10 + topic[:, None] * WORDS_PER_TOPIC + words
    return input_ids, topic


def test_local_windows_of_the_targets_carry_no_information():
    """The claim the task rests on: what a local-only encoder sees from any target is the same in every example."""
    input_ids, topic = make_batch(16, torch.Generator().manual_seed(1))
    assert set(topic.tolist()) == {0, 1}
    receptive_start = FIRST_TARGET - LAYERS * BLOCK  # 2 layers of one neighbouring block on each side
    assert receptive_start >= LENGTH // 2
    assert (input_ids[:, receptive_start:] == QUERY).all()


def test_tiny_lsg_encoder_learns_a_dependency_beyond_the_local_window():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and the CPU cores are shared
    try:
        config = tiny_config(
            vocab_size=10 + TOPICS * WORDS_PER_TOPIC,
            encoder_layers=LAYERS,
            decoder_layers=1,
            max_position_embeddings=LENGTH,
            block_size=BLOCK,
            sparse_block_size=BLOCK,
            num_global_tokens=16,
            dropout=0.0,
            attention_dropout=0.0,
        )
        encoder = LSGBartModel(config).get_encoder()
        head = nn.Linear(config.d_model, TOPICS)
        parameters = list(encoder.parameters()) + list(head.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.0)
        warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
        G = config.num_global_tokens

        def loss_on(input_ids, topic):
            states = encoder(input_ids=input_ids).last_hidden_state[:, G + FIRST_TARGET :]  # (n, 768, d_model)
            logits = head(states)
            return F.cross_entropy(logits.reshape(-1, TOPICS), topic.repeat_interleave(states.shape[1]))

        generator = torch.Generator().manual_seed(0)
        losses, start = [], time.perf_counter()
        for step in range(MAX_STEPS):
            loss = loss_on(*make_batch(BATCH, generator))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            warmup.step()
            losses.append(loss.item())
            if step >= 10 and sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5:
                break
        elapsed = time.perf_counter() - start

        initial, final = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
        assert all(math.isfinite(loss) for loss in losses)
        assert final < 0.5 * initial, f"loss {initial:.3f} -> {final:.3f} in {len(losses)} steps ({elapsed:.0f} s)"
        assert final < math.log(TOPICS), "no better than a model that cannot see the first half"

        # On inputs it has never seen, the model names the topic from more than 1,000 tokens away.
        encoder.eval()
        with torch.no_grad():
            input_ids, topic = make_batch(8, torch.Generator().manual_seed(123))
            assert loss_on(input_ids, topic).item() < math.log(TOPICS)
            states = encoder(input_ids=input_ids).last_hidden_state[:, G + FIRST_TARGET :]
            votes = head(states).argmax(-1).float().mean(dim=1)  # share of positions that say topic 1
            assert ((votes > 0.5).long() == topic).all()
    finally:
        torch.set_num_threads(threads)
