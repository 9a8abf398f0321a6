"""The host work of a decode step: how many tensors the runner builds from host lists (each a
synchronous host-to-device copy on a GPU) and how many it reads back (each a wait for the device).
On a GPU at batch 1 the engine's host work is a third of a step (docs/benchmarks.md, H200), so
these counts are pinned: a change that adds a transfer per step must say why here."""

import sys

import pytest
import torch

from reasonrl.engine import LLMEngine, SamplingParams
from reasonrl.engine.config import EngineConfig
from reasonrl.models import load_model

RUNNER_FILES = ("model_runner.py", "sampler.py")


@pytest.mark.parametrize("temperature,copies", [(0.0, 2), (1.0, 4)], ids=["greedy", "sampled"])
def test_a_decode_step_makes_two_host_to_device_copies_two_more_when_sampling_and_one_read_back(
        hf_checkpoint, monkeypatch, temperature, copies):
    path, _ = hf_checkpoint("qwen2")
    engine = LLMEngine(load_model(path, "cpu"), None, EngineConfig(kv_cache_memory=1 << 22, block_size=4))
    for i in range(3):  # an odd number of rows and sequences: the packed parts must stay aligned
        engine.add_request(str(i), [1, 2, 3, 4 + i], SamplingParams(temperature=temperature, max_tokens=8,
                                                                    ignore_eos=True, seed=i))
    engine.step()  # the prefills
    made, read, batches = [], [], []
    tensor, tolist, truth, prepare = torch.tensor, torch.Tensor.tolist, torch.Tensor.__bool__, engine.runner.prepare

    def counting_tensor(*args, **kwargs):
        if sys._getframe(1).f_code.co_filename.endswith(RUNNER_FILES):
            made.append(1)
        return tensor(*args, **kwargs)

    def counting_tolist(self):
        if sys._getframe(1).f_code.co_filename.endswith(RUNNER_FILES):
            read.append(1)
        return tolist(self)

    def counting_bool(self):  # a tensor's truth value is a read-back too (e.g. "are all rows greedy?")
        if sys._getframe(1).f_code.co_filename.endswith(RUNNER_FILES):
            read.append(1)
        return truth(self)

    monkeypatch.setattr(torch, "tensor", counting_tensor)
    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    monkeypatch.setattr(torch.Tensor, "__bool__", counting_bool)
    monkeypatch.setattr(engine.runner, "prepare", lambda *a: batches.append(prepare(*a)) or batches[-1])
    engine.step()  # three sequences, one token each
    assert len(made) == copies  # ids + positions + slots; lengths + block tables; sampling: its parameters, two
    assert len(read) == 1  # tokens and log-probs together
    monkeypatch.undo()
    b = batches[0]
    parts = (b.input_ids, b.positions, b.meta.slot_mapping, b.meta.context_lens_t, b.meta.block_tables)
    assert all(t.data_ptr() % 16 == 0 for t in parts)
    assert b.input_ids.tolist() == [s.token(p) for s, p in zip(b.sample_seqs, b.positions.tolist())]
    outs = engine.drain()
    assert all(len(o.outputs[0].token_ids) == 8 for o in outs.values())
