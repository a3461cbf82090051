"""Shared helpers for the eval/export tests: a tiny tokenizer, tiny models, a brute-force scorer. No tests here."""

from __future__ import annotations

import random

import torch

WORDS = ("the cat sat on a mat and dog ran to house with big red blue green small river city king war "
         "song film game year team , . ; : @-@ @,@ @.@ ( ) \" ' 's 1 2 3 4 = Title Section").split()


def random_article(rng: random.Random, n_lines: int = 3) -> str:
    """A WikiText-like article: title line, blank lines, paragraphs of tokenized words."""
    title = " = " + " ".join(rng.choice(WORDS[:20]).capitalize() for _ in range(2)) + " = \n"
    lines = [" \n", title, " \n"]
    for _ in range(n_lines):
        lines.append(" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) + " \n")
        lines.append(" \n")
    return "".join(lines)


def make_tokenizer(texts: list[str] | None = None, vocab_size: int = 300, bos: bool = True):
    """A byte-level BPE trained here (offline), wrapped as a fast HF tokenizer. EOS (and PAD) is `<|endoftext|>`
    (id 0); BOS is a different token, `<s>` (id 1), so a test sees which of the two a rule uses; `bos=False`
    gives a tokenizer without BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if texts is None:
        rng = random.Random(0)
        texts = [random_article(rng) for _ in range(30)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>" if bos else None, eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", clean_up_tokenization_spaces=False)
    assert out.eos_token_id == 0 and out.bos_token_id == (1 if bos else None)
    return out


def make_gpt2(vocab_size: int, n_positions: int = 256, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def make_tnl(vocab_size: int, seed: int = 0, **overrides):
    from tnl.model import TransnormerConfig, TransnormerForCausalLM

    torch.manual_seed(seed)
    kw = dict(vocab_size=vocab_size, decoder_embed_dim=32, decoder_attention_heads=2, decoder_layers=2, glu_dim=48,
              pad_token_id=0, bos_token_id=0, eos_token_id=0)
    kw.update(overrides)
    return TransnormerForCausalLM(TransnormerConfig(**kw)).eval()


@torch.no_grad()
def brute_force_loglik(model, inputs: list[int], targets: list[int], per_token: bool = False) -> float:
    """log p(targets | inputs) where inputs[-len(targets):] predict targets, one unbatched, unpadded sequence.

    per_token=True runs one forward per target on exactly the tokens before it (slow, assumes nothing about the
    model); otherwise one forward over `inputs`, scored position by position in fp64.
    """
    n = len(targets)
    if not per_token:
        logp = torch.log_softmax(model(input_ids=torch.tensor([inputs]), use_cache=False).logits[0].double(), -1)
        return sum(float(logp[len(inputs) - n + k, targets[k]]) for k in range(n))
    total = 0.0
    for k in range(n):
        end = len(inputs) - n + k + 1  # the model reads inputs[:end]; its last output predicts targets[k]
        logits = model(input_ids=torch.tensor([inputs[:end]]), use_cache=False).logits[0, -1].double()
        total += float(torch.log_softmax(logits, -1)[targets[k]])
    return total
