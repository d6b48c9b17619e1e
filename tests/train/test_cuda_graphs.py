"""Training steps replayed as CUDA graphs == the same steps run eagerly (GPU), and their config checks."""

from __future__ import annotations

import pytest
import torch

from rodimus.train.config import build_config
from rodimus.train.distributed import DistInfo
from rodimus.train.trainer import Trainer

from .conftest import tiny_fields

GPU = DistInfo(device=torch.device("cuda"))
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_cuda_graphs_config_is_checked(dataset_dir, tmp_path):
    with pytest.raises(ValueError, match="cuda_graph_max_docs"):
        build_config(None, None, tiny_fields(dataset_dir, cuda_graph_max_docs=0, out=str(tmp_path / "a")))
    cfg = build_config(None, None, tiny_fields(dataset_dir, cuda_graphs=True, out=str(tmp_path / "b")))
    with pytest.raises(ValueError, match="cuda_graphs needs a single CUDA device"):
        Trainer(cfg, progress=False)  # the default DistInfo is the CPU
    fields = tiny_fields(dataset_dir, cuda_graphs=True, activation_checkpointing=True, out=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="activation_checkpointing cannot be combined"):
        Trainer(build_config(None, None, fields), progress=False)


@cuda_only
@pytest.mark.parametrize("block_type", ["rodimus", "rodimus_plus"])
def test_graphed_steps_equal_eager_steps(dataset_dir, tmp_path, block_type):
    model = dict(block_type=block_type, d_model=32, n_layer=2, mixer_cfg=dict(mem_size=8))
    if block_type == "rodimus_plus":
        model["attn_cfg"] = dict(num_heads=2, window_size=16)
    fields = tiny_fields(dataset_dir, model=model, grad_accum=2, precision="fp32", cuda_graph_max_docs=24)
    runs = []
    for graphs in (False, True):
        cfg = build_config(None, None, {**fields, "cuda_graphs": graphs, "out": str(tmp_path / f"g{graphs}")})
        trainer = Trainer(cfg, GPU, progress=False)
        losses = [trainer.train_step(trainer.loader.next_step())[0] for _ in range(4)]
        params = {n: p.detach().clone() for n, p in trainer.base.named_parameters()}
        runs.append((losses, params, trainer.graphs))
    (l_eager, p_eager, _), (l_graph, p_graph, graphed) = runs
    assert graphed._fn is not None and not graphed._warned  # every micro-batch went through the graphs
    assert l_graph == pytest.approx(l_eager, rel=1e-5)
    for name, p in p_graph.items():
        torch.testing.assert_close(p, p_eager[name], rtol=1e-4, atol=1e-6, msg=name)


@cuda_only
def test_batches_with_too_many_documents_run_eagerly(dataset_dir, tmp_path):
    cfg = build_config(None, None, tiny_fields(dataset_dir, cuda_graphs=True, cuda_graph_max_docs=1, out=str(tmp_path)))
    trainer = Trainer(cfg, GPU, progress=False)
    with pytest.warns(UserWarning, match="running eagerly"):
        loss, _ = trainer.train_step(trainer.loader.next_step())
    assert trainer.graphs._fn is None and loss == loss
