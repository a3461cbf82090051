"""The compiled TNL mixer's fused op (tnl/model/fused_mixer.py) under TRITON_INTERPRET=1, against float64."""

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.attn_reference import recurrence
from tests.helpers.interpret import IN_CHILD, run_interpreted

pytest.importorskip("triton")

if not IN_CHILD:  # the kernel tests run in a child process under the interpreter (tests/interpret.py)

    def test_fused_mixer_interpreted():
        run_interpreted(__file__, timeout=900, TNL_AUTOTUNE="0")

else:
    from tnl.model import fused_mixer as FM
    from tnl.ops.lightning_attn.options import override_kernel_options

    EPS = 1e-6

    def _parts(qkvu, heads, kv_heads):
        """q, k, v, u of the packed [q | k | v | u] with H, Hkv, Hkv, H heads, as [B, T, heads, Dh]."""
        b, t, n = qkvu.shape
        dh = n // (2 * (heads + kv_heads))
        sizes = (heads * dh, kv_heads * dh, kv_heads * dh, heads * dh)
        return [x.reshape(b, t, -1, dh) for x in qkvu.split(sizes, dim=-1)]

    def _reference(qkvu, w, decay, heads, cu, kv_heads=None):
        """float64: out = W (u * SRMSNorm(o)), o = attention of (SiLU(q), SiLU(k), v) by the recurrence."""
        q, k, v, u = _parts(qkvu, heads, kv_heads or heads)
        o, _ = recurrence(F.silu(q), F.silu(k), v, decay, cu_seqlens=cu)
        o = o.flatten(-2)
        y = u.flatten(-2) * o / torch.sqrt(o.pow(2).mean(-1, keepdim=True) + EPS)
        return y @ w.t()

    def _fused(qkvu, w, decay, heads, cu, given=True, kv_heads=None):
        q, k = _parts(qkvu, heads, kv_heads or heads)[:2]
        # the activated copies stay in the autograd graph (as in the model): the op must give them no gradient
        acts = (F.silu(q), F.silu(k)) if given else (None, None)
        return FM.gated_attention_output(qkvu, *acts, decay, w, heads, EPS, cu_seqlens=cu, kv_heads=kv_heads)

    @pytest.mark.parametrize("compiling", [False, True])  # the eager Function or the custom op
    @pytest.mark.parametrize("case", ["plain", "segmented", "varlen", "head_dim_48", "silu_in_kernels", "tma",
                                      "gqa", "gqa_silu_in_kernels"])
    def test_fused_output_matches_float64(case, compiling, monkeypatch):
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
        torch.manual_seed(0)
        b, t, heads, dh = 2, 37, 2, 16
        cu = None
        made = []
        seg_len = None
        if case == "tma":  # TMA descriptors over the packed q, k, v views and the packed gradient's slices
            from tnl.ops.lightning_attn import passes, tuning

            monkeypatch.setattr(tuning, "INTERPRET_CONFIG", tuning.INTERPRET_CONFIG + (1,))
            monkeypatch.setattr(tuning, "_CHOSEN", {})
            real = passes._descriptor
            monkeypatch.setattr(passes, "_descriptor", lambda x, r, c: made.append(x.shape) or real(x, r, c))
        if case == "segmented":
            seg_len, t = 16, 48
        if case == "varlen":
            b, cu = 1, torch.tensor([0, 9, 9, 37], dtype=torch.int32)
        if case == "head_dim_48":
            dh = 48
        kv_heads = heads
        if case.startswith("gqa"):  # 4 q heads in 2 groups, varlen with an empty document
            heads, kv_heads, b, cu = 4, 2, 1, torch.tensor([0, 9, 9, 37], dtype=torch.int32)
        qkvu = torch.randn(b, t, 2 * (heads + kv_heads) * dh, requires_grad=True)
        w = (torch.randn(24, heads * dh) / 8).requires_grad_()
        decay = torch.rand(heads) * 0.5
        with override_kernel_options(seg_len=seg_len):
            out = _fused(qkvu, w, decay, heads, cu, given=not case.endswith("silu_in_kernels"), kv_heads=kv_heads)
            ref_in = [x.detach().double().requires_grad_() for x in (qkvu, w)]
            ref = _reference(*ref_in, decay, heads, cu, kv_heads)
            torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
            g = torch.randn(ref.shape, dtype=torch.float64)
            grads = torch.autograd.grad(out, (qkvu, w), g.float())
        grads_ref = torch.autograd.grad(ref, ref_in, g)
        for got, want in zip(grads, grads_ref):
            assert ((got.double() - want).norm() / want.norm()).item() < 1e-5
        assert (len(made) >= 16) == (case == "tma")  # forward, dq, dv and dk passes: four descriptors each

    def test_fused_output_bf16_close_to_float64():
        torch.manual_seed(1)
        heads, dh = 2, 32
        qkvu = torch.randn(2, 40, 4 * heads * dh).bfloat16().requires_grad_()
        w = (torch.randn(48, heads * dh) / 8).bfloat16().requires_grad_()
        decay = torch.rand(heads) * 0.5
        out = _fused(qkvu, w, decay, heads, None)
        ref_in = [x.detach().double().requires_grad_() for x in (qkvu, w)]
        ref = _reference(*ref_in, decay, heads, None)
        assert out.dtype == torch.bfloat16
        assert ((out.double() - ref).norm() / ref.norm()).item() < 2e-2
        g = torch.randn(ref.shape, dtype=torch.float64)
        for got, want in zip(torch.autograd.grad(out, (qkvu, w), g.bfloat16()),
                             torch.autograd.grad(ref, ref_in, g)):
            assert got.dtype == torch.bfloat16
            assert ((got.double() - want).norm() / want.norm()).item() < 3e-2

    @pytest.mark.parametrize("norm_backend,kv_heads", [("auto", 2), ("torch", 1)])
    def test_fused_op_passes_opcheck(norm_backend, kv_heads):
        """Schema, fake implementation (start-state shape from the plan) and autograd registration, segmented;
        grouped k/v heads too (kv_heads < heads)."""
        heads, dh = 2, 16
        qkvu = torch.randn(3, 40, 2 * (heads + kv_heads) * dh, requires_grad=True)
        q, k = _parts(qkvu.detach(), heads, kv_heads)[:2]
        w = torch.randn(24, heads * dh, requires_grad=True)
        with override_kernel_options(seg_len=16):
            torch.library.opcheck(FM._forward, (qkvu, F.silu(q), F.silu(k), torch.rand(heads), w, None, heads, EPS,
                                                norm_backend))
            # SiLU applied by the kernels as they load q and k (what eager mode passes)
            torch.library.opcheck(FM._forward, (qkvu, None, None, torch.rand(heads), w, None, heads, EPS,
                                                norm_backend))

    def test_fused_op_compiles_without_graph_breaks():
        heads, dh = 2, 16
        w = torch.randn(24, heads * dh, requires_grad=True)
        decay = torch.rand(heads) * 0.5

        def f(qkvu):
            return _fused(qkvu, w, decay, heads, None).sum()

        explain = torch._dynamo.explain(f)(torch.randn(2, 20, 4 * heads * dh, requires_grad=True))
        assert explain.graph_break_count == 0

    def test_bad_shapes_get_one_line_errors():
        qkvu, w = torch.randn(2, 5, 128), torch.randn(8, 32)
        with pytest.raises(ValueError, match=r"qkvu \[B, T, 2 \* \(heads \+ kv_heads\) \* head_dim\]"):
            FM.gated_attention_output(qkvu, torch.randn(2, 5, 2, 8), torch.randn(2, 5, 2, 8), torch.rand(2), w, 2,
                                      EPS)
        q = torch.randn(2, 5, 2, 16)
        with pytest.raises(ValueError, match="weight must be torch.float32"):
            FM.gated_attention_output(qkvu, q, q, torch.rand(2), w.bfloat16(), 2, EPS)
        with pytest.raises(ValueError, match="both None or"):
            FM.gated_attention_output(qkvu, q, None, torch.rand(2), w, 2, EPS)

    @pytest.mark.parametrize("settings", [
        {}, {"fused_mixer": False}, {"fold_qk_activation": False}, {"norm_backend": "torch"},
        {"norm_backend": "triton"}, {"num_key_value_heads": 1},
    ])
    @pytest.mark.parametrize("compiling", [True, False])
    def test_model_uses_the_fused_op_and_matches_float64(compiling, settings, monkeypatch):
        """A model with the Triton backend, eager or 'under torch.compile' (is_compiling patched): the non-LRPE
        layers run the fused op unless the config turns it off (fused_mixer=False, or fold_qk_activation=False,
        which keeps SiLU out of the kernels); logits and every parameter's gradient match the float64 model (torch
        backend) either way."""
        import tnl.model.norm_linear_attention as mt
        from tnl.model import TransnormerConfig, TransnormerForCausalLM

        torch.manual_seed(0)
        cfg = dict(vocab_size=64, decoder_embed_dim=32, hidden_dim=32, glu_dim=48, decoder_layers=3,
                   decoder_attention_heads=2, linear_use_lrpe_list=[1, 0, 0])
        shape = {k: v for k, v in settings.items() if k == "num_key_value_heads"}  # grouped k/v heads: both models
        ref = TransnormerForCausalLM(TransnormerConfig(**cfg, **shape, attn_backend="torch")).double().train()
        model = TransnormerForCausalLM(TransnormerConfig(**cfg, **settings, attn_backend="triton")).train()
        model.load_state_dict(ref.state_dict())
        calls = []
        fused = mt.gated_attention_output
        monkeypatch.setattr(mt, "gated_attention_output", lambda *a, **kw: calls.append(1) or fused(*a, **kw))
        ids = torch.randint(0, 64, (2, 19))
        out_ref = ref(input_ids=ids, labels=ids)
        out_ref.loss.backward()
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        uses_op = settings.get("fused_mixer", True) and settings.get("fold_qk_activation", True)
        assert len(calls) == (2 if uses_op else 0)  # layers 1 and 2; layer 0 has LRPE
        torch.testing.assert_close(out.logits.double(), out_ref.logits, rtol=1e-5, atol=1e-5)
        for (name, p), p_ref in zip(model.named_parameters(), ref.parameters()):
            rel = ((p.grad.double() - p_ref.grad).norm() / p_ref.grad.norm()).item()
            assert rel < 1e-4, f"{name}: {rel}"
        with torch.no_grad():  # inference: the separate ops (nothing to write gradients into)
            model(input_ids=ids)
        assert len(calls) == (0 if not uses_op else 2 if not compiling else 4)  # compiled inference keeps the op

    def test_exported_copy_runs_the_same_op(tmp_path, monkeypatch):
        """The Hugging Face export's flattened copy of the op (its own namespace, rewritten imports) gives the
        same output and gradients as tnl's, as the eager Function and as the custom op."""
        import importlib

        from tnl.export.code import write_model_code

        pkg = tmp_path / "exported_tnl"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        write_model_code(pkg)
        monkeypatch.syspath_prepend(str(tmp_path))
        exported = importlib.import_module("exported_tnl.fused_mixer")
        assert exported._NS != FM._NS
        torch.manual_seed(3)
        heads, dh = 2, 16
        qkvu = torch.randn(2, 21, 4 * heads * dh, requires_grad=True)
        w = torch.randn(24, heads * dh, requires_grad=True)
        decay = torch.rand(heads) * 0.5
        results = []
        for mod in (FM, exported):
            for compiling in (False, True):
                monkeypatch.setattr(torch.compiler, "is_compiling", lambda c=compiling: c)
                out = mod.gated_attention_output(qkvu, None, None, decay, w, heads, EPS)
                results.append((out, *torch.autograd.grad(out.square().sum(), (qkvu, w))))
        for got, want in ((results[2], results[0]), (results[3], results[1])):  # same code, same numbers
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
