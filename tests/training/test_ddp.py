"""DistributedDataParallel over an optimized model: two CPU processes (gloo) == one process."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import transformers

import fastbert
from tests.helpers import family_configs, padded_batch, rel_err

LENGTHS = [9, 3, 7, 9, 2, 6]


def _model():
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(family_configs()["bert"]).eval()
    return fastbert.optimize(model)


def _batch():
    ids, mask = padded_batch(211, LENGTHS, 0, seed=8)
    return ids, mask, torch.tensor([0, 1, 1, 0, 1, 0])


def _sgd_step(model, ids, mask, labels):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    opt.step()


def _worker(rank: int, world: int, port: int, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = torch.nn.parallel.DistributedDataParallel(_model())
    ids, mask, labels = _batch()
    part = slice(rank * len(LENGTHS) // world, (rank + 1) * len(LENGTHS) // world)
    _sgd_step(model, ids[part], mask[part], labels[part])
    if rank == 0:
        torch.save(model.module.state_dict(), out_path)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_process_step_equals_single_process(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ddp_state = torch.load(out)
    single = _model()
    _sgd_step(single, *_batch())
    start = _model().state_dict()
    names = list(start)
    single_update = torch.cat([(single.state_dict()[k] - start[k]).flatten().double() for k in names])
    ddp_update = torch.cat([(ddp_state[k] - start[k]).flatten().double() for k in names])
    assert single_update.norm() > 0  # the step really changed the weights
    # compared as one update vector: some entries (the key bias) have an exactly-zero gradient
    assert rel_err(ddp_update, single_update) < 1e-5
