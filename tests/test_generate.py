"""Generation: the KV-cache loop equals recomputing from scratch; sampling options, stop strings, streaming, batch mode."""

from __future__ import annotations

import json

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.decoding import Sampling, generate_ids, next_token
from slmkit.generate import GenerateArgs, generate_text, run_generate
from slmkit.checkpoint import load_checkpoint

from export_helpers import tiny_model, train_tokenizer, write_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gen")
    return write_run(folder / "run", train_tokenizer(folder / "tokenizer.json"), tiny_model(block_size=64, sliding_window=6))


@pytest.mark.parametrize("settings", [dict(), dict(positions="alibi", ffn="gelu", norm="layernorm"), dict(positions="learned", sliding_window=4)])
def test_cached_greedy_decoding_equals_recomputing_the_whole_sequence(settings):
    model = tiny_model(block_size=40, **settings)
    prompt = [5, 17, 42, 9]
    cached = list(generate_ids(model, prompt, 20, Sampling(temperature=0.0)))
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert cached == ids[len(prompt):]


def test_generation_stops_at_the_end_of_the_context():
    model = tiny_model(block_size=16)
    assert len(list(generate_ids(model, [1, 2, 3], 100, Sampling(temperature=0.0)))) == 13
    with pytest.raises(SlmkitError, match="context is 16"):
        list(generate_ids(model, list(range(16)), 5, Sampling()))


def test_top_k_one_is_greedy_and_sampling_is_seeded():
    logits = torch.randn(3, 50)
    seen = torch.zeros(3, 1, dtype=torch.long)
    greedy = next_token(logits, seen, Sampling(temperature=0.0), None)
    assert torch.equal(next_token(logits, seen, Sampling(temperature=1.0, top_k=1), torch.Generator().manual_seed(0)), greedy)
    a = next_token(logits, seen, Sampling(temperature=1.0), torch.Generator().manual_seed(3))
    b = next_token(logits, seen, Sampling(temperature=1.0), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    picks = {int(next_token(logits, torch.zeros(1, 1, dtype=torch.long), Sampling(temperature=1.0, top_p=0.7), torch.Generator().manual_seed(s))) for s in range(200)}
    assert picks == {0, 1}


def test_repetition_penalty_turns_away_from_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    seen = torch.tensor([[0]])
    assert int(next_token(logits, seen, Sampling(temperature=0.0), None)) == 0
    assert int(next_token(logits, seen, Sampling(temperature=0.0, repetition_penalty=1.2), None)) == 1


def test_stop_string_cuts_the_output_and_streaming_prints_the_same_text(run):
    loaded = load_checkpoint(run)
    free = generate_text(loaded, "The court", 30, Sampling(temperature=0.0))
    assert len(free) > 4
    stop = free[2:4]
    pieces: list[str] = []
    cut = generate_text(loaded, "The court", 30, Sampling(temperature=0.0), stop=[stop], on_text=pieces.append)
    assert cut == free[: free.find(stop)] and stop not in cut
    assert "".join(pieces) == cut


def test_streaming_to_the_terminal_prints_prompt_and_completion(run, capsys):
    [text] = run_generate(GenerateArgs(checkpoint=str(run), prompt="The court", max_new_tokens=8, temperature=0.0))
    assert capsys.readouterr().out == "The court" + text + "\n"


def test_batch_mode_reads_a_prompts_file_and_writes_json_lines(run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The court\n\nA party may\n")
    out = tmp_path / "out.jsonl"
    completions = run_generate(
        GenerateArgs(checkpoint=str(run), prompts_file=str(prompts), out=str(out), max_new_tokens=6, temperature=0.7, top_k=20, top_p=0.9)
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in records] == ["The court", "A party may"]
    assert [r["completion"] for r in records] == completions


@pytest.mark.parametrize(
    "overrides, message",
    [(dict(temperature=-1.0), "temperature"), (dict(top_p=0.0), "top_p"), (dict(prompt=None), "exactly one of")],
)
def test_bad_settings_are_user_errors(run, overrides, message):
    settings = dict(checkpoint=str(run), prompt="The court", max_new_tokens=2)
    settings.update(overrides)
    with pytest.raises(SlmkitError, match=message):
        run_generate(GenerateArgs(**settings))
