"""slmkit's GGUF in llama.cpp itself (llama-cpp-python, the `llamacpp` extra): the file loads, tokenizes held-out text
as the run's tokenizer does, gives slmkit's logits and greedy text, and chats in the format sft taught.

llama-cpp-python compiles llama.cpp from source on install (minutes), so these tests are kept out of `make test`;
`make test-llamacpp` installs the extra and runs them.
"""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from tokenizers import Regex, Tokenizer, pre_tokenizers

from slmkit.decoding import Sampling, generate_ids
from slmkit.export import ExportArgs, run_export
from slmkit.export.gguf_vocab import LLAMA3_SPLIT, QWEN2_SPLIT

from export_helpers import EOS, tiny_model, train_tokenizer, write_chat_run, write_chat_task, write_run

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed: `make test-llamacpp` installs slmkit[llamacpp] and runs these"
)
pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]

# Text the tokenizers never saw, with what pre-tokenizers split differently: digits, contractions, runs of spaces
# and newlines, punctuation, non-ASCII letters, and the end-of-document token itself.
HELDOUT = (
    "Section 12-3401(b) doesn't apply; the court's 1999 order ain't final.\n\n  Indented   text\twith tabs,"
    " naïve café — “quoted” 42nd 3.14159 CAPITALS You'll we'd\r\nend" + EOS + "Next document 2024."
)
# fp32 logits of llama.cpp against slmkit's on the same tokens: both compute in fp32, in a different order.
LOGIT_TOLERANCE = 1e-3


def _load(path, **kwargs):
    return llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, verbose=False, **kwargs)


def _llama_ids(llm, text: str) -> list[int]:
    # special=True: tokenizers matches the end-of-document token inside text, so llama.cpp is asked to as well.
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def _slmkit_greedy(model, prompt_ids: list[int], n: int, eos_id: int) -> list[int]:
    return list(generate_ids(model, prompt_ids, n, Sampling(temperature=0.0), eos_id))


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.mark.parametrize(
    "settings", [dict(n_kv_heads=2), dict(qk_norm=True, tie_embeddings=False)], ids=["llama", "qwen3"]
)
def test_llama_cpp_runs_the_fp32_gguf_as_slmkit(tmp_path, tokenizer_path, settings):
    model = tiny_model(d_model=64, block_size=256, **settings)
    run = write_run(tmp_path / "run", tokenizer_path, model)
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "gguf"), format="gguf", dtype="fp32"))
    # An fp32 KV cache: llama.cpp's default f16 cache alone moves logits by ~1e-2.
    llm = _load(out / "model.gguf", logits_all=True, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    ids = tokenizer.encode(HELDOUT, add_special_tokens=False).ids
    assert _llama_ids(llm, HELDOUT) == ids
    assert llm.detokenize(ids, special=True).decode("utf-8") == HELDOUT

    llm.eval(ids)
    theirs = torch.from_numpy(llm.scores[: len(ids)].copy())
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    assert (theirs - ours).abs().max().item() < LOGIT_TOLERANCE * max(1.0, ours.abs().max().item())

    prompt = tokenizer.encode("The court held that", add_special_tokens=False).ids
    eos_id = tokenizer.token_to_id(EOS)
    expected = _slmkit_greedy(model, prompt, 48, eos_id)  # ends at the end-of-document token, if it comes
    generated = []
    for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        generated.append(token)
        if token == eos_id or len(generated) == len(expected):
            break
    assert generated == expected


@pytest.mark.parametrize("dtype, agreement", [("q8_0", 0.95), ("q4_0", 0.8), ("q4_1", 0.8)])
def test_llama_cpp_runs_the_quantized_gguf_close_to_fp32(tmp_path, tokenizer_path, dtype, agreement):
    model = tiny_model(d_model=128, block_size=256, n_kv_heads=2, init_std=0.05)
    run = write_run(tmp_path / "run", tokenizer_path, model)
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / dtype), format="gguf", dtype=dtype))
    llm = _load(out / "model.gguf", logits_all=True)
    ids = Tokenizer.from_file(str(tokenizer_path)).encode(HELDOUT, add_special_tokens=False).ids
    llm.eval(ids)
    theirs = torch.from_numpy(llm.scores[: len(ids)].copy())
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    # The quantized file predicts the fp32 model's next token at most positions, and its log-probabilities stay close.
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item() >= agreement
    kl = (ours.softmax(-1) * (ours.log_softmax(-1) - theirs.log_softmax(-1))).sum(-1).mean().item()
    assert 0 <= kl < 0.05, kl  # mean KL(fp32 || quantized file) in nats per token


@pytest.mark.parametrize("pre_tokenizer, ignore_merges", [
    (pre_tokenizers.ByteLevel(add_prefix_space=False), False),
    (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), True),
    (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), False),
], ids=["gpt-2", "llama-bpe", "qwen2"])
def test_every_pre_tokenizer_name_written_tokenizes_as_the_tokenizer(tmp_path, legal_corpus, pre_tokenizer, ignore_merges):
    path = train_tokenizer(tmp_path / "tokenizer.json", vocab_size=400, pre_tokenizer=pre_tokenizer, ignore_merges=ignore_merges)
    run = write_run(tmp_path / "run", path, tiny_model(d_model=64, vocab_size=400))
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "gguf"), format="gguf"))
    llm = _load(out / "model.gguf", vocab_only=True)
    tokenizer = Tokenizer.from_file(str(path))
    # The legal recipes' held-out text (legal_heldout: the federal rules), real and dirty, besides the edge cases.
    with gzip.open(legal_corpus / "federal_rules.jsonl.gz", "rt", encoding="utf-8") as lines:
        rules = [json.loads(next(lines))["text"][:3000] for _ in range(3)]
    for text in (*rules, HELDOUT, HELDOUT.upper(), " leading space", "trailing spaces   ", "a\n\n\nb", "x" * 40 + " 1234567"):
        assert _llama_ids(llm, text) == tokenizer.encode(text, add_special_tokens=False).ids, text[:200]


def _learn(model, ids: list[int], steps: int = 150) -> None:
    """A few optimizer steps on one sequence: the model then answers as the sequence does, with clear margins."""
    tokens = torch.tensor([ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1])[0], tokens[0, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def test_an_sft_chat_model_chats_in_llama_cpp_as_it_was_trained(tmp_path, tokenizer_path):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    eos_id = tokenizer.token_to_id(EOS)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    # What objectives/sft.py trains on: the end-of-document token, each message in the one-message template, the
    # end-of-document token after the assistant's answer.
    prompt_ids = [eos_id] + encode("<|user|>\nWho decides the appeal?\n") + encode("<|assistant|>\n")
    model = tiny_model(d_model=64, block_size=256, n_kv_heads=2, init_std=0.05)
    _learn(model, prompt_ids + encode("The court.\n") + [eos_id])
    run = write_chat_run(tmp_path / "run", tokenizer_path, model, write_chat_task(tmp_path / "task"))
    out = run_export(ExportArgs(checkpoint=str(run), out=str(tmp_path / "gguf"), format="gguf"))
    llm = _load(out / "model.gguf")
    messages = [{"role": "user", "content": "Who decides the appeal?"}]

    # The prompt llama-cpp-python builds from the file's template is the token sequence sft trains on.
    prompt = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token=EOS, bos_token=EOS)(messages=messages).prompt
    assert _llama_ids(llm, prompt) == prompt_ids

    expected = _slmkit_greedy(model, prompt_ids, 12, eos_id)
    assert expected == encode("The court.\n") + [eos_id]
    answer = llm.create_chat_completion(messages, temperature=0.0, top_k=1, max_tokens=12)["choices"][0]
    assert answer["message"]["content"] == "The court.\n" and answer["finish_reason"] == "stop"
