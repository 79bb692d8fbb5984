"""Heads on the body, and the padding mask that lets sequences of different lengths share a batch exactly."""

from __future__ import annotations

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.model import POOLINGS, HeadSpec, Model, ModelConfig


def tiny(**overrides) -> ModelConfig:
    fields = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, d_model=32, dropout=0.0)
    fields.update(overrides)
    return ModelConfig(**fields)


def right_padded(sequences: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad)
    mask = torch.zeros(len(sequences), width, dtype=torch.bool)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = True
    return ids, mask


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(causal=False), dict(positions="alibi", causal=False), dict(sliding_window=3, causal=False),
     dict(attention_kernel="eager", causal=False, positions="learned"), dict(positions="alibi", sliding_window=4)],
    ids=["causal", "bidirectional", "alibi-bidirectional", "window-bidirectional", "eager-learned", "alibi-window"],
)
def test_padding_never_changes_the_hidden_states_of_real_tokens(overrides):
    torch.manual_seed(0)
    model = Model(tiny(**overrides)).eval()
    sequences = [[5, 9, 2, 7, 1, 3, 8], [4, 4, 6], [11, 12, 13, 14, 15]]
    ids, mask = right_padded(sequences, pad=17)
    with torch.no_grad():
        batched = model.body(ids, padding_mask=mask)
        for i, s in enumerate(sequences):
            alone = model.body(torch.tensor([s]))
            torch.testing.assert_close(batched[i, : len(s)], alone[0], atol=1e-5, rtol=1e-5)
        assert torch.isfinite(batched).all()


def test_a_padding_mask_of_the_wrong_shape_is_refused():
    model = Model(tiny())
    with pytest.raises(SlmkitError, match="padding_mask"):
        model(torch.zeros(2, 5, dtype=torch.long), padding_mask=torch.ones(2, 4, dtype=torch.bool))


def test_poolings_pick_the_last_real_token_the_first_or_the_mean():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    torch.testing.assert_close(POOLINGS.get("last")(hidden, mask), torch.stack([hidden[0, 2], hidden[1, 1]]))
    torch.testing.assert_close(POOLINGS.get("last")(hidden, None), hidden[:, -1])
    torch.testing.assert_close(POOLINGS.get("first")(hidden, mask), hidden[:, 0])
    torch.testing.assert_close(POOLINGS.get("mean")(hidden, mask), torch.stack([hidden[0, :3].mean(0), hidden[1, :2].mean(0)]))


@pytest.mark.parametrize("pooling", ["last", "first", "mean"])
def test_sequence_classification_of_a_padded_batch_equals_one_sequence_at_a_time(pooling):
    torch.manual_seed(0)
    model = Model(tiny(causal=pooling != "last"), heads=[HeadSpec("sequence_classification", ("a", "b", "c"), pooling)]).eval()
    sequences = [[5, 9, 2, 7, 1], [4, 4, 6], [3]]
    ids, mask = right_padded(sequences)
    with torch.no_grad():
        batched = model(ids, padding_mask=mask)
        alone = torch.cat([model(torch.tensor([s])) for s in sequences])
    assert batched.shape == (3, 3) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_heads_have_the_shapes_and_layers_that_transformers_uses():
    model = Model(tiny(), heads=[HeadSpec("token_classification", tuple("OBIXY")), HeadSpec("span"), HeadSpec("lm")])
    ids = torch.randint(0, 61, (2, 7))
    assert model(ids).shape == (2, 7, 5)
    assert model(ids, head="span").shape == (2, 7, 2)
    assert model(ids, head="lm").shape == (2, 7, 61)
    assert model.heads["token_classification"].score.bias is not None
    assert model.heads["span"].qa_outputs.bias is not None
    classifier = Model(tiny(), heads=[HeadSpec("sequence_classification", ("no", "yes"))])
    assert classifier.heads["sequence_classification"].score.bias is None
    assert "heads.lm.proj.weight" not in classifier.state_dict()
    with pytest.raises(SlmkitError, match="no 'lm' head"):
        classifier(ids, head="lm")


def test_a_head_without_enough_labels_or_an_unknown_head_is_a_user_error():
    with pytest.raises(SlmkitError, match="at least 2 labels"):
        Model(tiny(), heads=[HeadSpec("sequence_classification", ("only",))])
    with pytest.raises(SlmkitError, match="unknown head"):
        Model(tiny(), heads=[HeadSpec("classifer", ("no", "yes"))])
    with pytest.raises(SlmkitError, match="unknown pooling"):
        Model(tiny(), heads=[HeadSpec("sequence_classification", ("no", "yes"), "max")])


def test_a_cached_decode_step_reads_the_padding_mask_of_every_key():
    torch.manual_seed(0)
    # Without positions, only the mask can tell the padded row from the same tokens unpadded.
    model = Model(tiny(positions="none")).eval()
    ids, mask = right_padded([[5, 9, 2], [4, 4]], pad=0)
    with torch.no_grad():
        cache = model.new_cache(2, 4)
        model(ids, cache=cache, padding_mask=mask)
        step = model(torch.tensor([[7], [7]]), cache=cache, padding_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], 1))
        alone = model(torch.tensor([[4, 4, 7]]))
    torch.testing.assert_close(step[1, -1], alone[0, -1], atol=1e-5, rtol=1e-5)


def test_logit_softcap_squashes_logits_smoothly_into_the_cap():
    torch.manual_seed(0)
    plain = Model(tiny(init_std=1.0)).eval()
    capped = Model(tiny(init_std=1.0, logit_softcap=2.0)).eval()
    capped.load_state_dict(plain.state_dict())
    ids = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        raw, squashed = plain(ids), capped(ids)
    assert raw.abs().max() > 2.0 and squashed.abs().max() <= 2.0
    torch.testing.assert_close(squashed, 2.0 * torch.tanh(raw / 2.0))


def test_a_softcapped_model_is_refused_by_every_export_target():
    from slmkit.export.targets import select_target

    with pytest.raises(SlmkitError, match=r"logit_softcap=30.0 \(LlamaForCausalLM has no logit soft-capping\)"):
        select_target(tiny(logit_softcap=30.0))
