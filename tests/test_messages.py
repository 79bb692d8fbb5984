"""Messages in the user's terms: what was given (input=, out=, init_from=) and what to do, checked before the work;
no traceback, no misleading words (a task where there is none, Python objects in random bytes), nothing printed
before an error."""

from __future__ import annotations

import json
import logging
import random

import pytest

from export_helpers import tiny_model, train_tokenizer, write_run
from slmkit.checkpoint import read_state_dict, save_inference_checkpoint
from slmkit.checkpoint.starting_point import starting_point
from slmkit.config import LoraConfig, RunConfig
from slmkit.errors import SlmkitError
from slmkit.generate import GenerateArgs, run_generate
from slmkit.lora import add_lora
from slmkit.model import MASKED_LM_HEAD, HeadSpec
from slmkit.predict import PredictArgs, run_predict


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def test_a_folder_given_as_input_is_named_as_a_folder_not_a_task(tmp_path):
    with pytest.raises(SlmkitError) as refused:
        run_predict(PredictArgs(checkpoint="runs/any", input=str(tmp_path)))
    message = str(refused.value)
    assert message.startswith(f"input={tmp_path}: {tmp_path} is a folder") and "*.jsonl" in message
    assert "task" not in message


def test_a_missing_input_is_named_as_given(tmp_path):
    with pytest.raises(SlmkitError) as refused:
        run_predict(PredictArgs(checkpoint="runs/any", input=str(tmp_path / "none.jsonl")))
    assert str(refused.value).startswith(f"input={tmp_path / 'none.jsonl'}: no data file matches")
    assert "task" not in str(refused.value)


def test_out_is_checked_before_the_work(tmp_path):
    (tmp_path / "records.jsonl").write_text(json.dumps({"text": "The court"}) + "\n")
    with pytest.raises(SlmkitError, match=r"out=.* is a folder, and a file is written there"):
        run_predict(PredictArgs(checkpoint=str(tmp_path / "no-such-run"), input=str(tmp_path / "records.jsonl"),
                                out=str(tmp_path)))


def test_random_bytes_are_not_called_python_objects(tmp_path):
    (tmp_path / "noise.ckpt").write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(SlmkitError) as refused:
        read_state_dict(tmp_path / "noise.ckpt")
    assert "not a PyTorch checkpoint" in str(refused.value) and "Python objects" not in str(refused.value)
    assert "weights_only" not in str(refused.value)


def test_lora_with_no_targets_is_a_message():
    with pytest.raises(SlmkitError, match="lora.targets is empty.*q_proj.*lora.rank=0"):
        add_lora(tiny_model(), LoraConfig(rank=4, targets=[]))


def test_a_transformers_folder_given_to_init_from_is_named_as_one(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SlmkitError, match=r"init_from=.* is a transformers model folder \(config.json, no config.yaml\)"):
        starting_point(tmp_path, "init_from").layer(model=True)


def test_generate_on_an_encoder_prints_nothing_before_its_error(tmp_path, tokenizer_path, capsys):
    encoder = tiny_model(head=HeadSpec(MASKED_LM_HEAD), causal=False, n_kv_heads=None)
    save_inference_checkpoint(tmp_path, encoder, RunConfig(name="encoder", model=encoder.config), tokenizer_path)
    with pytest.raises(SlmkitError, match="bidirectional encoder"):
        run_generate(GenerateArgs(checkpoint=str(tmp_path), prompt="The court", stream=True))
    assert capsys.readouterr().out == ""


def test_predict_with_a_language_model_on_task_records_says_it_has_no_task_head(tmp_path, tokenizer_path, caplog):
    run = write_run(tmp_path / "run", tokenizer_path, tiny_model())
    (tmp_path / "records.jsonl").write_text(json.dumps({"text": "The court held", "label": "yes"}) + "\n")
    with caplog.at_level(logging.WARNING, logger="slmkit"):
        results = run_predict(PredictArgs(checkpoint=str(run), input=str(tmp_path / "records.jsonl"), max_new_tokens=2))
    assert "completion" in results[0]["prediction"]
    assert "language model with no task head" in caplog.text and "label" in caplog.text


def test_a_transformers_teacher_with_pickled_weights_is_refused_as_possibly_unsafe(tmp_path):
    import argparse

    import torch
    from transformers import LlamaConfig

    from slmkit.distill.teacher import describe_teacher
    from slmkit.model import LM_HEAD

    LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=32, architectures=["LlamaForCausalLM"]).save_pretrained(tmp_path)
    torch.save({"model.embed_tokens.weight": torch.zeros(64, 16), "hook": argparse.Namespace(run="os.system")},
               tmp_path / "pytorch_model.bin")
    with pytest.raises(SlmkitError) as refused:
        describe_teacher(tmp_path).load(LM_HEAD)
    message = str(refused.value)
    assert "other than tensors" in message and "may be unsafe" in message and "weights_only" not in message


def test_a_late_refusal_leaves_no_partial_run_folder(shared_dir, tmp_path):
    from tests.test_faults import train_in_process

    run = tmp_path / "run"
    with pytest.raises(SlmkitError, match="lora.targets is empty"):
        train_in_process(shared_dir, run, "trainer.max_steps=2", "lora.rank=4", "lora.targets=[]")
    assert not run.exists()


def test_predict_says_when_long_inputs_are_cut(tmp_path, tokenizer_path, caplog):
    from slmkit.model import CLASSIFIER_HEAD

    run = write_run(tmp_path / "run", tokenizer_path, tiny_model(head=HeadSpec(CLASSIFIER_HEAD, ("no", "yes"))))
    records = [{"text": "The court held that the statute applies. " * 20}, {"text": "Appeal denied."}]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with caplog.at_level(logging.WARNING, logger="slmkit"):
        run_predict(PredictArgs(checkpoint=str(run), input=str(tmp_path / "records.jsonl")))
    assert "1 of 2 inputs fill the model's whole window of 32 tokens" in caplog.text


def test_an_error_raised_in_a_data_loader_worker_reaches_the_user_as_its_message_alone():
    """torch re-raises a worker's exception with the worker's traceback as the message (a streamed shard that cannot
    be fetched fails there): the user reads the original message, not the traceback."""
    import torch.utils.data

    class Failing(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            raise SlmkitError("data.shards_from=memory://b has no shard 3: publish it again\nand a second line")

    with pytest.raises(SlmkitError) as caught:
        list(torch.utils.data.DataLoader(Failing(), num_workers=1))
    assert str(caught.value) == "data.shards_from=memory://b has no shard 3: publish it again\nand a second line"
