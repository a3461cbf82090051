"""TransnormerForCausalLM: behaviour against direct formulas written here (float64), caches, packing, generate."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tnl.model import TransnormerCache, TransnormerConfig, TransnormerForCausalLM, alibi_slopes, decay_rates

V = 61


def make(token_mixer: str = "tnl", **kw) -> TransnormerForCausalLM:
    base = dict(
        vocab_size=V, decoder_embed_dim=32, decoder_layers=3, decoder_attention_heads=4, hidden_dim=32, glu_dim=48,
        linear_use_lrpe_list=[1, 0, 1], token_mixer=token_mixer, pad_token_id=0,
    )
    base.update(kw)
    return TransnormerForCausalLM(TransnormerConfig(**base)).eval()


def srms(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def reference_tnl_logits(model: TransnormerForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    """The TNL forward written out directly (quadratic form, float64), from the parameters by their official names."""
    cfg = model.config
    sd = {k: v.detach().double() for k, v in model.state_dict().items()}
    d, n_heads, n_layers, hid = cfg.decoder_embed_dim, cfg.decoder_attention_heads, cfg.decoder_layers, cfg.hidden_dim
    dh = hid // n_heads
    n_kv = cfg.num_key_value_heads  # grouped heads: q head h reads k/v head h // (H / Hkv)
    group = n_heads // n_kv
    b, t = ids.shape
    x = sd["model.embed_tokens.weight"][ids] * math.sqrt(d)
    n = torch.arange(t, dtype=torch.float64)
    dist = n[:, None] - n[None, :]
    for li in range(n_layers):
        p = f"model.layers.{li}."
        xn = srms(x)
        q, k, v, u = (xn @ sd[p + "token_mixer.qkvu_proj.weight"].T).split([hid, n_kv * dh, n_kv * dh, hid], dim=-1)
        q, k = F.silu(q).view(b, t, n_heads, dh), F.silu(k).view(b, t, n_kv, dh)
        v = v.view(b, t, n_kv, dh)
        if cfg.linear_use_lrpe_list[li]:  # one angle set per k/v head
            theta = sd[p + "token_mixer.lrpe.theta"].view(1, 1, n_kv, dh)
            ang = n.view(1, t, 1, 1) * theta
            q_ang = torch.stack([ang[:, :, h // group] for h in range(n_heads)], dim=2)
            q = torch.cat([q * q_ang.cos(), q * q_ang.sin()], -1)
            k = torch.cat([k * ang.cos(), k * ang.sin()], -1)
        o = torch.zeros(b, t, n_heads, dh, dtype=torch.float64)
        for h in range(n_heads):
            s = 2.0 ** (-8.0 * (h + 1) / n_heads) * (1 - li / (n_layers - 1) + 1e-5)
            decay = torch.where(dist >= 0, torch.exp(-s * dist), torch.zeros(()))
            kh, vh = k[:, :, h // group], v[:, :, h // group]
            o[:, :, h] = ((q[:, :, h] @ kh.transpose(1, 2)) * decay) @ vh
        o = srms(o.reshape(b, t, hid)) * u
        x = x + o @ sd[p + "token_mixer.out_proj.weight"].T
        xn = srms(x)
        g = (xn @ sd[p + "channel_mixer.l1.weight"].T) * (xn @ sd[p + "channel_mixer.l2.weight"].T)
        x = x + g @ sd[p + "channel_mixer.l3.weight"].T
    return srms(x) @ sd["model.embed_tokens.weight"].T


def randomize_lrpe(model: TransnormerForCausalLM) -> None:
    # theta is learnable: perturb it so the test does not only see the init values
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lrpe.theta"):
                p.mul_(1 + 0.1 * torch.rand_like(p))


@pytest.mark.parametrize("settings", [
    {}, {"fused_mixer": False}, {"fold_qk_activation": False}, {"norm_backend": "torch"}, {"norm_backend": "triton"},
    {"num_key_value_heads": 2}, {"num_key_value_heads": 1},
])
def test_forward_matches_direct_formula_float64(settings):
    model = make(**settings).double()
    randomize_lrpe(model)
    ids = torch.randint(1, V, (2, 150))  # more than two of the PyTorch path's 64-token blocks, and a partial one
    got = model(ids).logits
    want = reference_tnl_logits(model, ids)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_official_parameter_names_and_tied_head():
    model = make()
    names = set(model.state_dict())
    for i in range(3):
        assert {f"model.layers.{i}.token_mixer.qkvu_proj.weight", f"model.layers.{i}.token_mixer.out_proj.weight",
                f"model.layers.{i}.channel_mixer.l1.weight", f"model.layers.{i}.channel_mixer.l2.weight",
                f"model.layers.{i}.channel_mixer.l3.weight"} <= names
    assert "model.layers.0.token_mixer.lrpe.theta" in names and "model.layers.1.token_mixer.lrpe.theta" not in names
    assert "model.embed_tokens.weight" in names and "lm_head.weight" in names
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.model.layers[0].token_mixer.qkvu_proj.weight.shape == (4 * 32, 32)


def test_init_std_no_bias_and_lrpe_theta_closed_form():
    model = make(decoder_embed_dim=64, hidden_dim=64, glu_dim=256, init_std=0.05)
    w = model.model.layers[1].channel_mixer.l1.weight
    assert abs(w.std().item() - 0.05) < 0.005 and abs(w.mean().item()) < 0.005
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    theta = model.model.layers[0].token_mixer.lrpe.theta
    h, dh = 4, 16
    want = torch.tensor([[10000 ** (-2 * (hh * dh + j) / (h * dh)) for j in range(dh)] for hh in range(h)])
    torch.testing.assert_close(theta.detach().view(h, dh), want.float())
    assert theta.shape == (h, 1, dh)


def test_decay_schedules():
    cfg = TransnormerConfig(decoder_layers=4, decoder_attention_heads=8)
    for li in range(4):
        want = [2 ** (-8 * (h + 1) / 8) * (1 - li / 3 + 1e-5) for h in range(8)]
        assert decay_rates(cfg, li) == pytest.approx(want, rel=1e-12)
    assert min(decay_rates(cfg, 3)) > 0 and max(decay_rates(cfg, 3)) < 1e-5  # last layer barely decays
    # ALiBi's rule for 6 heads: the 4-head slopes, then every other 8-head slope
    assert alibi_slopes(6) == pytest.approx([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    one = TransnormerConfig(decoder_layers=1, decoder_attention_heads=4)
    assert decay_rates(one, 0) == pytest.approx([s * (1 + 1e-5) for s in alibi_slopes(4)])
    none = TransnormerConfig(decoder_layers=2, decoder_attention_heads=4, decay_schedule="none")
    assert decay_rates(none, 0) == [0.0] * 4


@pytest.mark.parametrize("heads,layers", [(8, 4), (6, 5), (1, 1)])
def test_paper_schedule_is_the_layer_aware_formula(heads, layers):
    """decay_schedule="paper" gives decay = -g_gamma with g_gamma = -(8 / H) * (1 - layer_idx / num_layers) * h,
    h = 0..H-1 (the layer-aware lightning attention interface); "paper_one_based" numbers heads from 1. Both the
    rates and what each TNL / hybrid layer hands to the attention op."""
    for mixer in ("tnl", "hybrid"):
        model = make(mixer, decoder_layers=layers, decoder_attention_heads=heads, hidden_dim=6 * heads,
                     linear_use_lrpe_list=[0] * layers, decay_schedule="paper")
        for layer_idx in range(layers):
            g_gamma = [-(8.0 / heads) * (1.0 - layer_idx / layers) * h for h in range(heads)]
            want = torch.tensor([-g for g in g_gamma], dtype=torch.float64)
            got = model.model.layers[layer_idx].token_mixer.decay(torch.device("cpu"), torch.float64)
            torch.testing.assert_close(got, want, rtol=1e-15, atol=0)
    cfg = TransnormerConfig(decoder_layers=layers, decoder_attention_heads=heads, hidden_dim=6 * heads,
                            decay_schedule="paper_one_based")
    for layer_idx in range(layers):
        want = [8.0 / heads * (1.0 - layer_idx / layers) * h for h in range(1, heads + 1)]
        assert decay_rates(cfg, layer_idx) == pytest.approx(want, rel=1e-15)


def test_labels_loss_is_shifted_mean_over_kept_tokens():
    model = make()
    ids = torch.randint(1, V, (2, 12))
    labels = ids.clone()
    labels[0, :5] = -100
    out = model(ids, labels=labels)
    logits = out.logits[:, :-1].reshape(-1, V).double()
    tgt = labels[:, 1:].reshape(-1)
    keep = tgt != -100
    want = -(logits.log_softmax(-1)[keep, tgt[keep]]).mean()
    torch.testing.assert_close(out.loss.double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "mixer,kw",
    [("tnl", {}), ("softmax", {}), ("softmax", dict(sliding_window=5, num_key_value_heads=2, qk_norm=True)),
     ("hybrid", dict(num_key_value_heads=2)), ("hybrid", dict(group_tokens=8))],
)
def test_prefill_then_decode_equals_parallel(mixer, kw):
    """Hybrid with group_tokens=8: its cross-block part spans several groups of two blocks each."""
    kw = dict(kw)
    group = kw.pop("group_tokens", None)
    model = make(mixer, hybrid_block_size=4, **kw)
    for mod in model.modules():
        if group is not None and hasattr(mod, "group_tokens"):
            mod.group_tokens = group
    ids = torch.randint(1, V, (2, 17))
    full = model(ids, use_cache=False).logits
    out = model(ids[:, :6], use_cache=True)
    cache = out.past_key_values
    assert isinstance(cache, TransnormerCache) and cache.get_seq_length() == 6
    steps = [out.logits]
    for i in range(6, 17):
        out = model(ids[:, i : i + 1], past_key_values=cache, use_cache=True)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
    # a short prompt (shorter than the softmax window) decoded token by token
    out = model(ids[:, :2], use_cache=True)
    cache, steps = out.past_key_values, [out.logits]
    for i in range(2, 9):
        out = model(ids[:, i : i + 1], past_key_values=cache, use_cache=True)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, :9], rtol=1e-4, atol=1e-4)
    # a multi-token chunk after a cached prefix continues the positions too
    out = model(ids[:, :5], use_cache=True)
    out2 = model(ids[:, 5:], past_key_values=out.past_key_values, use_cache=True)
    torch.testing.assert_close(torch.cat([out.logits, out2.logits], 1), full, rtol=1e-4, atol=1e-4)


def test_tnl_cache_memory_is_constant_in_context_length():
    model = make()
    sizes = []
    for t in (4, 40):
        cache = model(torch.randint(1, V, (1, t)), use_cache=True).past_key_values
        cache = model(torch.randint(1, V, (1, 1)), past_key_values=cache, use_cache=True).past_key_values
        sizes.append(cache.memory_bytes())
    # per layer one fp32 state [B=1, H=4, D, E=8]; LRPE doubles D (8 -> 16) on layers 0 and 2
    assert sizes[0] == sizes[1] == (4 * 16 * 8 + 4 * 8 * 8 + 4 * 16 * 8) * 4


def test_static_cache_updates_states_in_place_with_explicit_positions():
    model = make()
    ids = torch.randint(1, V, (2, 12))
    full = model(ids).logits
    cache = model(ids[:, :8], use_cache=True).past_key_values
    cache.make_static()
    ptrs = [layer.state.data_ptr() for layer in cache.layers]
    for i in range(8, 12):
        pos = torch.full((2, 1), i)
        out = model(ids[:, i : i + 1], past_key_values=cache, position_ids=pos, use_cache=True)
        torch.testing.assert_close(out.logits[:, 0], full[:, i], rtol=1e-4, atol=1e-4)
    assert [layer.state.data_ptr() for layer in cache.layers] == ptrs


@pytest.mark.parametrize(
    "mixer,kw,lens",
    [("tnl", {}, [5, 1, 9, 4]), ("softmax", {}, [5, 1, 9, 4]), ("softmax", {}, [4, 3, 2, 4, 1, 3, 4]),
     ("softmax", dict(sliding_window=3, num_key_value_heads=2), [5, 1, 9, 4]), ("softmax", {}, [2, 17]),
     ("hybrid", {}, [5, 1, 9, 4])],
)
def test_packed_cu_seqlens_equal_separate_documents(mixer, kw, lens):
    model = make(mixer, hybrid_block_size=3, **kw)
    docs = [torch.randint(1, V, (1, n)) for n in lens]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    packed = model(torch.cat(docs, 1), cu_seqlens=cu).logits
    sep = torch.cat([model(d).logits for d in docs], 1)
    torch.testing.assert_close(packed, sep, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mixer", ["tnl", "softmax", "hybrid"])
def test_left_padding_matches_unpadded_rows(mixer):
    model = make(mixer, hybrid_block_size=4)
    # hybrid blocks sit at absolute positions, so its pads must fill whole blocks to match the unpadded row
    pads = 4 if mixer == "hybrid" else 3
    short, long_ = torch.randint(1, V, (1, 9 - pads)), torch.randint(1, V, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, pads, dtype=torch.long), short], 1), long_])
    mask = torch.ones_like(batch)
    mask[0, :pads] = 0
    out = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(out[0, pads:], model(short).logits[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], model(long_).logits[0], rtol=1e-4, atol=1e-4)
    gen = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    ref0 = model.generate(short, max_new_tokens=6, do_sample=False, pad_token_id=0)
    ref1 = model.generate(long_, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(gen[0, pads:], ref0[0]) and torch.equal(gen[1], ref1[0])


@pytest.mark.parametrize("mixer", ["tnl", "softmax", "hybrid"])
def test_masked_pad_contents_never_matter(mixer):
    """Whatever sits under attention_mask = 0 (here 3 pads, so the hybrid caches a partial block holding pads)
    changes neither the real positions' logits nor the greedy continuation."""
    model = make(mixer, hybrid_block_size=4)
    real = torch.randint(1, V, (2, 6))
    mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 6, dtype=torch.long)], 1)
    a = torch.cat([torch.zeros(2, 3, dtype=torch.long), real], 1)
    b = torch.cat([torch.randint(1, V, (2, 3)), real], 1)
    torch.testing.assert_close(model(a, attention_mask=mask).logits[:, 3:], model(b, attention_mask=mask).logits[:, 3:])
    kw = dict(attention_mask=mask, max_new_tokens=7, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(model.generate(a, **kw)[:, 3:], model.generate(b, **kw)[:, 3:])


@pytest.mark.parametrize("mixer", ["tnl", "softmax"])
def test_generate_with_cache_equals_without(mixer):
    model = make(mixer)
    ids = torch.randint(1, V, (2, 7))
    kw = dict(max_new_tokens=8, pad_token_id=0, eos_token_id=None)
    greedy = model.generate(ids, do_sample=False, **kw)
    assert torch.equal(greedy, model.generate(ids, do_sample=False, use_cache=False, **kw))
    beams = model.generate(ids, num_beams=3, do_sample=False, num_return_sequences=2, **kw)
    assert beams.shape == (4, 15)
    assert torch.equal(beams, model.generate(ids, num_beams=3, do_sample=False, num_return_sequences=2,
                                             use_cache=False, **kw))
    torch.manual_seed(1)
    s1 = model.generate(ids, do_sample=True, top_k=10, **kw)
    torch.manual_seed(1)
    s2 = model.generate(ids, do_sample=True, top_k=10, use_cache=False, **kw)
    assert torch.equal(s1, s2)


def test_gradient_checkpointing_gives_same_gradients():
    model = make().train()
    ids = torch.randint(1, V, (2, 10))
    model(ids, labels=ids).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.model.gradient_checkpointing
    model(ids, labels=ids).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-6)


def test_save_load_round_trip_with_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = make()
    randomize_lrpe(model)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "transnormer" and "AutoModelForCausalLM" in cfg["auto_map"]
    assert AutoConfig.from_pretrained(tmp_path).hidden_size == 32
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, TransnormerForCausalLM)
    ids = torch.randint(1, V, (2, 9))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_attribute_map_and_official_config_fields():
    cfg = TransnormerConfig(decoder_embed_dim=64, decoder_layers=3, decoder_attention_heads=4, glu_dim=100)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (64, 3, 4, 100)
    assert cfg.linear_use_lrpe_list == [1, 0, 0] and cfg.hidden_dim == 64
    with pytest.raises(ValueError):
        TransnormerConfig(token_mixer="mamba")


def test_logits_to_keep_and_upcast():
    model = make().to(torch.bfloat16)
    ids = torch.randint(1, V, (1, 8))
    full = model(ids).logits
    assert full.dtype == torch.bfloat16
    last = model(ids, logits_to_keep=1, upcast_logits=True).logits
    assert last.shape == (1, 1, V) and last.dtype == torch.float32
    torch.testing.assert_close(last[0, 0], full[0, -1].float())


@pytest.mark.slow
def test_torch_compile_cpu_matches_eager():
    model = make()
    ids = torch.randint(1, V, (2, 16))
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_official_config_json_and_state_dict_load_unchanged(tmp_path):
    """A config.json with OpenNLPLab's fields (and their auto_map) and a state dict with their names and shapes
    (written here from their architecture) load into tnl as they are."""
    from transformers import AutoConfig

    official = {
        "architectures": ["TransnormerForCausalLM"], "model_type": "transnormer",
        "auto_map": {"AutoConfig": "configuration_transnormer.TransnormerConfig",
                     "AutoModelForCausalLM": "modeling_transnormer.TransnormerForCausalLM"},
        "decoder_embed_dim": 64, "decoder_attention_heads": 4, "decoder_layers": 2, "glu_dim": 96, "hidden_dim": 64,
        "linear_act_fun": "swish", "linear_use_lrpe_list": [1, 0], "no_scale_embedding": False,
        "norm_type": "simplermsnorm", "bias": False, "init_std": 0.02, "vocab_size": 100, "pad_token_id": 0,
        "bos_token_id": 1, "eos_token_id": 2, "use_cache": True, "add_bos_token": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.31.0",
    }
    (tmp_path / "config.json").write_text(json.dumps(official))
    cfg = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(cfg, TransnormerConfig) and cfg.num_hidden_layers == 2 and cfg.token_mixer == "tnl"
    d, h, heads, g, v = 64, 64, 4, 96, 100
    emb = torch.randn(v, d)
    sd = {"model.embed_tokens.weight": emb, "lm_head.weight": emb.clone(),
          "model.layers.0.token_mixer.lrpe.theta": torch.rand(heads, 1, h // heads)}
    for i in range(2):
        p = f"model.layers.{i}."
        sd |= {p + "token_mixer.qkvu_proj.weight": torch.randn(4 * h, d) / 8,
               p + "token_mixer.out_proj.weight": torch.randn(d, h) / 8,
               p + "channel_mixer.l1.weight": torch.randn(g, d) / 8,
               p + "channel_mixer.l2.weight": torch.randn(g, d) / 8,
               p + "channel_mixer.l3.weight": torch.randn(d, g) / 8}
    model = TransnormerForCausalLM(cfg).eval()
    model.load_state_dict(sd, strict=True)
    ids = torch.randint(1, v, (1, 7))
    torch.testing.assert_close(model.double()(ids).logits, reference_tnl_logits(model, ids), rtol=1e-9, atol=1e-9)


def test_tuple_outputs_hidden_states_and_inputs_embeds():
    model = make()
    ids = torch.randint(1, V, (2, 6))
    out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == 3 + 1
    loss, logits = model(ids, labels=ids, return_dict=False)[:2]
    torch.testing.assert_close(logits, out.logits)
    embeds = model.get_input_embeddings()(ids) * math.sqrt(32)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, out.logits)
    gen = model.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    ref = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(gen[:, -4:], ref[:, -4:])


def test_import_tnl_registers_auto_classes_without_importing_transformers_early():
    """`import tnl.ops` stays free of transformers; the Auto registration runs once transformers is imported."""
    import subprocess
    import sys

    code = (
        "import sys, tnl.ops\n"
        "assert 'transformers' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        "c = AutoConfig.for_model('transnormer', vocab_size=11, decoder_embed_dim=8, decoder_layers=1,"
        " decoder_attention_heads=2, glu_dim=8)\n"
        "assert type(AutoModelForCausalLM.from_config(c)).__name__ == 'TransnormerForCausalLM'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_bias_and_dropout_only_when_configured():
    plain = make()
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    model = make(bias=True, dropout=0.3)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not model.lm_head]
    assert linears and all(m.bias is not None and not m.bias.any() for m in linears)
    ids = torch.randint(1, V, (2, 8))
    model.train()
    assert not torch.equal(model(ids).logits, model(ids).logits)  # dropout active
    model.eval()
    assert torch.equal(model(ids).logits, model(ids).logits)


def test_foreign_caches_are_replaced_when_empty_and_refused_otherwise():
    from transformers import DynamicCache

    model = make()
    ids = torch.randint(1, V, (1, 5))
    try:
        empty = DynamicCache(config=model.config)
    except TypeError:  # transformers 4.x
        empty = DynamicCache()
    out = model(ids, past_key_values=empty, use_cache=True)
    assert isinstance(out.past_key_values, TransnormerCache) and out.past_key_values.get_seq_length() == 5
    with pytest.raises(TypeError):
        model(ids, past_key_values=(torch.zeros(1),), use_cache=True)


def test_positions_restart_per_document_and_skip_left_pads():
    from tnl.model import TransnormerModel

    cu = torch.tensor([0, 3, 4, 8], dtype=torch.int32)
    pos = TransnormerModel._positions(None, None, cu, 0, 8, torch.device("cpu"))
    assert pos.tolist() == [[0, 1, 2, 0, 0, 1, 2, 3]]
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert TransnormerModel._positions(None, mask, None, 0, 5, torch.device("cpu")).tolist() == [
        [0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    # decoding: the full mask gives the next position; without a mask the cache offset does
    assert TransnormerModel._positions(None, mask, None, 4, 1, torch.device("cpu")).tolist() == [[2], [4]]
    assert TransnormerModel._positions(None, None, None, 7, 2, torch.device("cpu")).tolist() == [[7, 8]]


def test_single_layer_model_runs_with_every_schedule():
    for schedule in ("tnl", "paper", "paper_one_based", "none"):
        model = make(decoder_layers=1, linear_use_lrpe_list=[1], decay_schedule=schedule)
        logits = model(torch.randint(1, V, (1, 6))).logits
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("fold,compiling,folded", [
    (True, False, True), (True, True, False), (False, False, False), (False, True, False),
])
def test_silu_fold_follows_config_and_mode(fold, compiling, folded, monkeypatch):
    """fold_qk_activation=True (default) folds SiLU into attention in eager mode only (Inductor fuses it under
    compile); False never does."""
    model = make(linear_use_lrpe_list=[0, 0, 0], fold_qk_activation=fold)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    calls = []
    for layer in model.model.layers:
        act = layer.token_mixer.act
        layer.token_mixer.act = lambda x, act=act: calls.append(1) or act(x)
    model(input_ids=torch.randint(0, model.config.vocab_size, (1, 9)))
    assert (len(calls) == 0) == folded


@pytest.mark.parametrize("field,value,allowed", [
    ("fused_mixer", "yes", "true or false"), ("fused_mixer", 0, "true or false"),
    ("fold_qk_activation", "auto", "true or false"), ("fold_qk_activation", None, "true or false"),
    ("norm_backend", "cuda", "'auto', 'triton', 'torch'"),
])
def test_settings_reject_bad_values_with_one_line(field, value, allowed):
    with pytest.raises(ValueError, match=f"{field} must be") as err:
        TransnormerConfig(**{field: value})
    message = str(err.value)
    assert "\n" not in message and allowed in message and repr(value) in message


def test_config_without_the_settings_loads_with_defaults(tmp_path):
    """A config.json written before these settings existed (no fused_mixer, fold_qk_activation, norm_backend)
    loads with the defaults; a saved config keeps the values it was given."""
    old = make().config.to_dict()
    for key in ("fused_mixer", "fold_qk_activation", "norm_backend"):
        old.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(old))
    cfg = TransnormerConfig.from_pretrained(tmp_path)
    assert (cfg.fused_mixer, cfg.fold_qk_activation, cfg.norm_backend) == (True, True, "auto")
    TransnormerForCausalLM(cfg)  # and the model builds from it
    TransnormerConfig(fused_mixer=False, fold_qk_activation=False, norm_backend="torch").save_pretrained(tmp_path)
    cfg = TransnormerConfig.from_pretrained(tmp_path)
    assert (cfg.fused_mixer, cfg.fold_qk_activation, cfg.norm_backend) == (False, False, "torch")


def test_compiled_mixer_hands_activated_q_k_to_attention(monkeypatch):
    """Under torch.compile (fold_qk_activation=True) the mixer computes SiLU(q), SiLU(k) and passes them with the
    raw q, k (qk_activated), except on the LRPE layer; logits and gradients equal the plain mixer's (float64)."""
    import tnl.model.norm_linear_attention as mt

    torch.manual_seed(0)
    hinted = make(linear_use_lrpe_list=[1, 0, 0]).double().train()
    plain = make(linear_use_lrpe_list=[1, 0, 0], fold_qk_activation=False).double().train()
    plain.load_state_dict(hinted.state_dict())
    seen = []

    def spy(*args, **kw):
        seen.append((kw.get("qk_activation"), kw.get("qk_activated") is not None))
        return lightning_attn(*args, **kw)

    lightning_attn = mt.lightning_attn
    monkeypatch.setattr(mt, "lightning_attn", spy)
    ids = torch.randint(0, hinted.config.vocab_size, (2, 19))
    outs = []
    for model, compiling in ((hinted, True), (plain, True)):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda c=compiling: c)
        seen.clear()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        outs.append((out.logits, [p.grad.clone() for p in model.parameters()], list(seen)))
    assert outs[0][2] == [(None, False), ("silu", True), ("silu", True)]  # layer 0 has LRPE
    assert outs[1][2] == [(None, False)] * 3
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_silu_inside_attention_gives_the_same_model():
    """SiLU applied by the attention op (default) or by the token mixer (fold_qk_activation=False): same logits and
    gradients, with LRPE on layer 0 (never folded), packed documents and a padded batch (not folded)."""
    torch.manual_seed(0)
    folded = make(linear_use_lrpe_list=[1, 0, 0]).double().train()
    plain = make(linear_use_lrpe_list=[1, 0, 0], fold_qk_activation=False).double().train()
    plain.load_state_dict(folded.state_dict())
    assert folded.model.layers[1].token_mixer.act_in_attention
    assert not plain.model.layers[1].token_mixer.act_in_attention
    ids = torch.randint(0, folded.config.vocab_size, (2, 19))
    mask = torch.ones(2, 19, dtype=torch.long)
    mask[1, :4] = 0
    cu = torch.tensor([0, 7, 19], dtype=torch.int32)
    for kw in (dict(input_ids=ids), dict(input_ids=ids[:1], cu_seqlens=cu), dict(input_ids=ids, attention_mask=mask)):
        outs = []
        for model in (folded, plain):
            model.zero_grad()
            out = model(**kw, labels=kw["input_ids"])
            out.loss.backward()
            outs.append((out.logits, [p.grad.clone() for p in model.parameters()]))
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-12, atol=1e-12)
        for a, b in zip(outs[0][1], outs[1][1]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
