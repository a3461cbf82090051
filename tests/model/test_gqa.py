"""Grouped key/value heads (num_key_value_heads < H) in the TNL token mixer: decoding, packing, the layout without
grouping, parameter counts, the HF export and the official layout. Its float64 forward against the formula is in
test_model.py (test_forward_matches_direct_formula_float64)."""

from __future__ import annotations

import pytest
import torch

from tests.model.test_model import V, make, randomize_lrpe
from tnl.model import TransnormerConfig, TransnormerForCausalLM


def test_k_v_are_projected_to_the_grouped_heads():
    model = make(num_key_value_heads=2)  # H = 4, hidden 32: head dim 8
    mixer = model.model.layers[0].token_mixer
    assert mixer.qkvu_proj.weight.shape == (32 + 2 * 2 * 8 + 32, 32)  # q, k, v, u: 4, 2, 2, 4 heads
    assert mixer.lrpe.theta.shape == (2, 1, 8)  # one angle set per k/v head


@pytest.mark.parametrize("kv", [1, 2])
def test_decoding_with_grouped_heads_equals_parallel(kv):
    model = make(num_key_value_heads=kv).double()
    randomize_lrpe(model)
    ids = torch.randint(1, V, (2, 140))  # prefill crosses two 64-token blocks
    full = model(ids, use_cache=False).logits
    out = model(ids[:, :130], use_cache=True)
    cache = out.past_key_values
    assert cache.layers[1].state.shape == (2, 4, 8, 8)  # a state per q head (each has its own decay)
    steps = [out.logits]
    for i in range(130, 140):
        out = model(ids[:, i : i + 1], past_key_values=cache, use_cache=True)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)


def test_packed_documents_with_grouped_heads_equal_separate_ones():
    model = make(num_key_value_heads=2).double()
    lens = [5, 70, 1]
    docs = [torch.randint(1, V, (1, n)) for n in lens]
    cu = torch.tensor([0, 5, 75, 76], dtype=torch.int32)
    packed = model(torch.cat(docs, 1), cu_seqlens=cu).logits
    separate = torch.cat([model(d).logits for d in docs], 1)
    torch.testing.assert_close(packed, separate, rtol=1e-10, atol=1e-10)


def test_kv_heads_equal_to_heads_is_the_ungrouped_model():
    """num_key_value_heads = H is the model without grouping: the same parameters (official names and shapes,
    qkvu_proj 4 * hidden_dim wide) and bit-for-bit the same logits and gradients from the same weights."""
    plain = make().train()
    grouped = make(num_key_value_heads=4).train()
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in grouped.state_dict().items()}
    assert plain.model.layers[1].token_mixer.qkvu_proj.weight.shape == (4 * 32, 32)
    grouped.load_state_dict(plain.state_dict())
    ids = torch.randint(1, V, (2, 70))
    a, b = plain(ids, labels=ids), grouped(ids, labels=ids)
    a.loss.backward()
    b.loss.backward()
    assert torch.equal(a.logits, b.logits)
    for (name, p), q in zip(plain.named_parameters(), grouped.parameters()):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("bias", [False, True])
def test_parameter_count_follows_grouped_heads(bias):
    from tools.count_params import count_params

    d, hid, h, kv, glu, n_layers, vocab = 32, 48, 6, 2, 40, 3, 61
    cfg = TransnormerConfig(vocab_size=vocab, decoder_embed_dim=d, hidden_dim=hid, decoder_attention_heads=h,
                            num_key_value_heads=kv, glu_dim=glu, decoder_layers=n_layers, bias=bias,
                            linear_use_lrpe_list=[1, 0, 0])
    dh = hid // h
    qkvu_out = 2 * hid + 2 * kv * dh
    mixer = d * qkvu_out + hid * d + (qkvu_out + d if bias else 0)
    sglu = 3 * d * glu + (2 * glu + d if bias else 0)
    lrpe = kv * dh  # layer 0
    want = vocab * d + n_layers * (mixer + sglu) + lrpe
    assert count_params(cfg) == (want, vocab * d)


def test_config_refuses_kv_heads_that_do_not_divide_heads():
    for kv in (3, 0, 8):
        with pytest.raises(ValueError, match="num_key_value_heads must divide decoder_attention_heads"):
            TransnormerConfig(decoder_attention_heads=4, hidden_dim=32, num_key_value_heads=kv)


@pytest.fixture(scope="module")
def tok():
    from tests.helpers.eval_common import make_tokenizer

    return make_tokenizer()


def test_hf_export_round_trip_with_grouped_heads(tmp_path, tok, monkeypatch):
    """The export's copied model code builds the grouped model: same logits and greedy tokens as tnl's."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    from tnl.export import export_hf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    model = TransnormerForCausalLM(TransnormerConfig(
        vocab_size=len(tok), decoder_embed_dim=32, hidden_dim=32, glu_dim=48, decoder_layers=2,
        decoder_attention_heads=4, num_key_value_heads=2, linear_use_lrpe_list=[1, 0])).eval()
    out = export_hf(model, tok, tmp_path / "export")
    # the folder's code (AutoModelForCausalLM would pick tnl's registered class in this process)
    cls = get_class_from_dynamic_module("modeling_transnormer.TransnormerForCausalLM", out)
    loaded = cls.from_pretrained(out).eval()
    assert type(loaded).__module__.startswith("transformers_modules")  # the folder's copy, not tnl's
    assert loaded.config.num_key_value_heads == 2
    ids = torch.randint(1, len(tok), (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
        gen = loaded.generate(ids[:1], max_new_tokens=5, do_sample=False)
        assert torch.equal(gen, model.generate(ids[:1], max_new_tokens=5, do_sample=False))


def test_official_layout_refuses_grouped_heads_in_one_line(tmp_path, tok):
    from tnl.export import ExportError, export_official

    model = make(num_key_value_heads=2, decay_schedule="tnl")
    with pytest.raises(ExportError, match="grouped key/value heads") as err:
        export_official(model, tok, tmp_path / "official")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "official").exists()


def test_count_params_tool_takes_grouped_heads(capsys):
    from tools.count_params import count_params, main
    from tools.model_configs import load_config

    main(["tnl_44m", "--set", "num_key_value_heads=2"])
    row = capsys.readouterr().out.splitlines()[1].split()
    total = count_params(load_config("tnl_44m", num_key_value_heads=2))[0]
    assert row[:3] == ["tnl_44m", "tnl", "2"] and row[4] == f"{total:,}"
    # k, v: 8 -> 2 heads of 64 in each of 6 layers; layer 0's LRPE angles: one set per k/v head
    assert total == count_params(load_config("tnl_44m"))[0] - 6 * 512 * 2 * (512 - 2 * 64) - (512 - 2 * 64)
