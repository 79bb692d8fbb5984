"""ZeRO checkpoints written by a real DeepSpeed engine consolidate, with safe loading only, to the module's weights."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from slmkit.errors import SlmkitError
from slmkit.checkpoint.zero import consolidate_zero_checkpoint

pytest.importorskip("deepspeed")

# One CPU process over gloo; the engine trains a step so the fp32 master weights differ from the initial ones.
WRITER = textwrap.dedent(
    """
    import os, sys, torch
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import deepspeed
    from safetensors.torch import save_file
    from slmkit.model import Model, ModelConfig

    stage, out = int(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)

    class Wrapper(torch.nn.Module):  # holds the Transformer as `model`, like slmkit's LightningModule
        def __init__(self):
            super().__init__()
            self.model = Model(ModelConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, d_model=20, bias=True))
            self.model.body.blocks[0].ffn_norm.weight.requires_grad_(False)  # a frozen parameter too

        def forward(self, x):
            return self.model(x)

    module = Wrapper()
    params = [p for p in module.parameters() if p.requires_grad]
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage}, "zero_force_ds_cpu_optimizer": False}
    engine, *_ = deepspeed.initialize(model=module, optimizer=torch.optim.AdamW(params, lr=1e-2), config=config)
    for _ in range(2):
        loss = engine(torch.randint(0, 61, (1, 8))).pow(2).mean()
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(out, tag="step-2")
    if stage == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters())):
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    else:
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    state.pop("model.heads.lm.proj.weight")  # tied to the embedding
    save_file(state, os.path.join(out, "expected.safetensors"))
    """
)


@pytest.mark.parametrize("stage", [2, 3])
def test_consolidated_zero_checkpoint_equals_the_module_weights(tmp_path, stage):
    script = tmp_path / "write.py"
    script.write_text(WRITER)
    port = str(29600 + stage)
    done = subprocess.run([sys.executable, str(script), str(stage), str(tmp_path), port], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = load_file(str(tmp_path / "expected.safetensors"))
    state = consolidate_zero_checkpoint(tmp_path)  # via the `latest` file
    assert set(expected) <= set(state)
    for name, tensor in expected.items():
        assert torch.equal(state[name].float(), tensor.float()), name
    assert torch.equal(state["model.body.blocks.0.ffn_norm.weight"], torch.ones(20))  # the frozen one


def test_a_folder_without_shards_is_a_user_error(tmp_path):
    with pytest.raises(SlmkitError, match="not a DeepSpeed ZeRO checkpoint"):
        consolidate_zero_checkpoint(tmp_path)


class CallsPrint:
    """Unpickling this would call print(): a stand-in for a checkpoint that runs code when loaded unsafely."""

    def __reduce__(self):
        return (print, ("this ran from a checkpoint",))


def test_a_shard_holding_code_is_refused_without_running_it(tmp_path, capsys):
    torch.save({"optimizer_state_dict": {"zero_stage": CallsPrint()}}, tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    torch.save({"module": {}}, tmp_path / "mp_rank_00_model_states.pt")
    with pytest.raises(SlmkitError, match="cannot read DeepSpeed shard"):
        consolidate_zero_checkpoint(tmp_path)
    assert "this ran" not in capsys.readouterr().out
