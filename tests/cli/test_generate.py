"""`tnl generate`: greedy decoding against a brute-force argmax over full forward passes, sampling settings, stop
strings, the JSONL output, streaming, and hostile inputs (one line, exit 2, nothing changed on disk)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.cli.test_cli import tnl
from tests.helpers.eval_common import make_tnl, make_tokenizer
from tnl.errors import UserError
from tnl.generate import SamplingSettings, generate_ids
from tnl.generate.run import run_generation

PROMPTS = ["the cat sat on a mat", "a dog", "green river city king war song"]
MIXERS = {
    "tnl": {},
    "softmax": dict(token_mixer="softmax"),
    "hybrid": dict(token_mixer="hybrid", hybrid_block_size=4),
    "sinusoidal": dict(token_mixer="softmax", position_encoding="sinusoidal", max_position_embeddings=24),
}


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tok) -> dict[str, Path]:
    """Tiny exported models (random weights, init_std 0.3 so that argmax varies from token to token)."""
    from tnl.export.hf import export_hf

    root = tmp_path_factory.mktemp("exports")
    return {name: export_hf(make_tnl(len(tok), seed=1, init_std=0.3, **kw), tok, root / name)
            for name, kw in MIXERS.items()}


def generate(folder: Path, capsys=None, **kw) -> list[dict]:
    from omegaconf import OmegaConf  # imported here: the GPU test below runs where omegaconf is not installed

    cfg = OmegaConf.create({"model_path": str(folder), "device": "cpu", "max_new_tokens": 12, "temperature": 0,
                            "seed": 0, **kw})
    rows = run_generation(cfg)
    if capsys is not None:
        capsys.readouterr()
    return rows


@torch.no_grad()
def brute_force_greedy(model, tok, prompt: str, steps: int) -> list[int]:
    """Argmax of a full forward pass over everything so far, one token at a time, no cache, no padding; the prompt
    follows the BOS token, as in evaluation."""
    seq = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]
    out = []
    for _ in range(steps):
        nxt = int(model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].double().argmax())
        if nxt == tok.eos_token_id:
            break
        seq.append(nxt)
        out.append(nxt)
    return out


@pytest.mark.parametrize("name", ["tnl", "softmax", "hybrid"])
def test_greedy_equals_brute_force_argmax(exports, tok, name, capsys, tmp_path):
    """Batched, left-padded prompts through the cache (the recurrent state for TNL) give the same tokens as argmax
    over full parallel forward passes of each prompt alone; the command returns the same texts in prompt order."""
    from tnl.checkpoint import load_pretrained
    from tnl.generate.run import encode

    model = load_pretrained(exports[name], log=lambda *a, **k: None).model.float()
    expected = [brute_force_greedy(model, tok, p, 8) for p in PROMPTS]
    assert len({tuple(e) for e in expected}) == len(PROMPTS) and any(len(set(e)) > 3 for e in expected)
    if name != "hybrid":  # left padding does not change TNL or softmax outputs (hybrid batches equal lengths)
        settings = SamplingSettings(max_new_tokens=8, temperature=0, eos_token_id=tok.eos_token_id)
        got = generate_ids(model, encode(tok, PROMPTS), settings, pad_token_id=tok.pad_token_id, tokenizer=tok)
        assert got.tokens == expected
    if name == "tnl":  # the prompts read 3 tokens at a time through the state (left pads fill whole chunks)
        got = generate_ids(model, encode(tok, PROMPTS), settings, pad_token_id=tok.pad_token_id, prefill_chunk=3)
        assert got.tokens == expected
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    rows = generate(exports[name], capsys, prompt_file=str(tmp_path / "prompts.txt"), batch_size=3,
                    max_new_tokens=8)
    assert [r["completion"] for r in rows] == [tok.decode(e) for e in expected]
    assert [r["tokens"] for r in rows] == [len(e) for e in expected]


def test_seed_reproducibility_and_top_k_one_is_greedy(exports, capsys):
    folder = exports["tnl"]
    sample = dict(prompt=PROMPTS[0], temperature=1.0, max_new_tokens=16)
    a, b = generate(folder, capsys, **sample), generate(folder, capsys, **sample)
    c = generate(folder, capsys, **sample, seed=1)
    assert a == [{**b[0], "tokens_per_s": a[0]["tokens_per_s"]}]
    assert c[0]["completion"] != a[0]["completion"]
    greedy = generate(folder, capsys, prompt=PROMPTS[0], max_new_tokens=16)
    top1 = generate(folder, capsys, **sample, top_k=1, seed=7)
    assert top1[0]["completion"] == greedy[0]["completion"]


def test_stop_strings_cut_the_completion(exports, capsys):
    folder = exports["tnl"]
    full = generate(folder, capsys, prompt=PROMPTS[1], max_new_tokens=24)[0]
    text = full["completion"]
    stop = text[6:9]
    assert len(text) > 12 and stop.strip()
    cut = generate(folder, capsys, prompt=PROMPTS[1], max_new_tokens=24, stop_strings=[stop, "never seen @@"])[0]
    assert cut["completion"] == text[: text.find(stop)]
    assert cut["tokens"] < full["tokens"]


def test_cli_streams_and_writes_jsonl_rows(exports, tmp_path):
    """One prompt: streamed to stdout and the same text in the JSONL; a prompt file: one row per prompt and
    sequence, in order, blank lines skipped."""
    single = tnl("generate", f"model_path={exports['tnl']}", f"prompt={PROMPTS[0]}", "temperature=0",
                 "max_new_tokens=10", f"output={tmp_path / 'one.jsonl'}", "device=cpu", cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    row = json.loads((tmp_path / "one.jsonl").read_text())
    assert set(row) == {"prompt", "completion", "tokens", "tokens_per_s"}
    assert single.stdout.rstrip("\n").endswith(row["completion"].rstrip("\n")) and row["prompt"] == PROMPTS[0]
    assert "prefill:" in single.stderr and "decode:" in single.stderr
    (tmp_path / "prompts.txt").write_text(f"{PROMPTS[0]}\n\n{PROMPTS[1]}\n{PROMPTS[2]}\n")
    many = tnl("generate", f"model_path={exports['hybrid']}", "prompt_file=prompts.txt", "num_return_sequences=2",
               "batch_size=2", "max_new_tokens=6", "temperature=1.0", "output=out.jsonl", "device=cpu", cwd=tmp_path)
    assert many.returncode == 0, many.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [p for p in PROMPTS for _ in range(2)]
    assert all(0 <= r["tokens"] <= 6 and r["tokens_per_s"] >= 0 for r in rows)


def _tree_hash(*folders: Path) -> str:
    h = hashlib.sha256()
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            h.update(str(p.relative_to(folder)).encode())
            if p.is_file():
                h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("overrides,message", [
    ({"prompt": "   "}, "the prompt is empty"),
    ({"prompt": "x", "top_p": 0.0}, "top_p must be in (0, 1]"),
    ({"prompt": "x", "top_p": 1.5}, "top_p must be in (0, 1]"),
    ({"prompt": "x", "temperature": -1}, "temperature must be >= 0"),
    ({"prompt": "x", "max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ({"prompt": "x", "num_return_sequences": 3}, "num_return_sequences > 1 needs sampling"),
    ({"prompt": "x", "repetition_penalty": 0}, "repetition_penalty must be > 0"),
    ({"prompt": "x", "stop_strings": [""]}, "stop_strings must be a list of non-empty strings"),
    ({"prompt": "x", "device": "tpu"}, "device='tpu' is not a device"),
    ({"prompt": "x", "dtype": "int8"}, "dtype='int8'"),
    ({"prompt": "x", "prompt_file": "p.txt"}, "give prompt or prompt_file, not both"),
    ({"prompt_file": "missing.txt"}, "does not exist"),
    ({"prompt_file": "blank.txt"}, "holds no prompt"),
    ({"prompt": "x", "output": "afolder"}, "cannot be written (it is a folder)"),
    ({"prompt": "the cat sat on a mat " * 4}, "but the model reads at most 24 (sinusoidal positions)"),
    ({"prompt": "the cat sat", "max_new_tokens": 30}, "exceeds the model's 24 positions"),
    ({"prompt": "x", "notokenizer": True}, "has no tokenizer files"),
])
def test_hostile_inputs_are_one_line_and_change_nothing(exports, tmp_path, monkeypatch, overrides, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afolder").mkdir()
    (tmp_path / "blank.txt").write_text("\n  \n")
    folder = exports["sinusoidal"]
    if overrides.pop("notokenizer", False):  # an official-layout folder: tokenizer files are optional there
        folder = tmp_path / "official"
        from tnl.checkpoint import load_pretrained
        from tnl.export.official import export_official

        export_official(load_pretrained(exports["tnl"], log=lambda *a, **k: None).model, None, folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (folder / name).unlink(missing_ok=True)
    before = _tree_hash(tmp_path, exports["sinusoidal"])
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"model_path": str(folder), "device": "cpu", "temperature": 0, "max_new_tokens": 4,
                            "verify": False, **overrides})
    with pytest.raises(UserError) as err:
        run_generation(cfg, log=lambda *a, **k: None)
    text = str(err.value)
    assert message in text and "\n" not in text, text
    assert _tree_hash(tmp_path, exports["sinusoidal"]) == before


def test_cli_errors_exit_2_with_one_line(exports, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(exports["tnl"], bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink(missing_ok=True)
    before = _tree_hash(tmp_path)
    proc = tnl("generate", f"model_path={bare}", "prompt=", "verify=false", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: the prompt is empty; give prompt=\"some text\""], proc.stderr[-2000:]
    proc = tnl("generate", f"model_path={bare}", "prompt=hello", "verify=false", "output=o.jsonl", cwd=tmp_path)
    last = proc.stderr.strip().splitlines()[-1]  # after transformers' weight-loading progress bar
    assert proc.returncode == 2 and last.startswith(f"error: cannot load the tokenizer from {bare}"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1
    assert _tree_hash(tmp_path) == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_decode_equals_eager(tok):
    """The decode step replayed from a CUDA graph gives the eager loop's tokens (fp32, batched with padding)."""
    from tnl.generate.run import encode

    model = make_tnl(len(tok), seed=1, init_std=0.3, decoder_layers=3, linear_use_lrpe_list=[1, 0, 1]).cuda()
    settings = SamplingSettings(max_new_tokens=24, temperature=0)
    ids = encode(tok, PROMPTS)
    graphed = generate_ids(model, ids, settings, pad_token_id=tok.pad_token_id, use_graph=True)
    eager = generate_ids(model, ids, settings, pad_token_id=tok.pad_token_id, use_graph=False)
    assert graphed.graphed and not eager.graphed
    assert graphed.tokens == eager.tokens


def test_help_lists_the_main_keys_with_their_meaning(tmp_path):
    proc = tnl("generate", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tnl generate model_path=PATH" in proc.stdout and "generate is powered by Hydra" in proc.stdout
    for key in ("prompt_file:", "max_new_tokens:", "temperature:", "top_k:", "top_p:", "repetition_penalty:",
                "num_return_sequences:", "stop_strings:", "seed:", "output:", "device:", "dtype:", "verify:"):
        line = next(line for line in proc.stdout.splitlines() if line.strip().startswith(key))
        assert "#" in line, line  # with its comment


def test_sampling_equals_transformers_generate_of_the_export(exports, tok):
    """Temperature, top-k, top-p and repetition penalty draw the same tokens as transformers' `generate()` of the
    exported folder loaded with AutoModelForCausalLM, from the same seed: the export generates the same way."""
    from transformers import AutoModelForCausalLM

    from tnl.generate.run import encode

    hf = AutoModelForCausalLM.from_pretrained(str(exports["tnl"]), trust_remote_code=True).eval()
    ids = encode(tok, [PROMPTS[0]])
    kw = dict(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.3)
    torch.manual_seed(5)
    ours = generate_ids(hf, ids, SamplingSettings(max_new_tokens=16, eos_token_id=tok.eos_token_id, **kw),
                        pad_token_id=tok.pad_token_id).tokens[0]
    torch.manual_seed(5)
    ref = hf.generate(torch.tensor(ids), do_sample=True, max_new_tokens=16, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **kw)[0, len(ids[0]):].tolist()
    assert ref[-1] != tok.eos_token_id and len(set(ref)) > 4
    assert ours == ref
