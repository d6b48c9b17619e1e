"""lm-evaluation-harness through its Hugging Face adapter.

``import rodimus`` registers model_type 'rodimus' with transformers' Auto classes, so the harness's
``hf`` model loads our folders like any other causal LM. The bundled toy tasks (``rodimus_toy_mc``,
``rodimus_toy_cloze``, tag ``rodimus_toy``) read jsonl files shipped in ``rodimus/eval/tasks``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rodimus.eval.common import atomic_write_text, pick_device

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
PAPER_TASKS = ["lambada_openai", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]


@dataclass
class HarnessConfig:
    model: str  # model folder (ours or any transformers causal LM)
    tasks: list[str] = field(default_factory=lambda: ["rodimus_toy"])  # task names, tags or groups
    tokenizer: str | None = None  # tokenizer folder; None = the model folder
    include_paths: list[str] = field(default_factory=list)  # extra folders of task YAMLs
    num_fewshot: int | None = None  # None = each task's default (0 for the paper's zero-shot runs)
    batch_size: int = 8  # requests per forward
    limit: float | None = None  # examples per task (int) or fraction (< 1); None = all
    bootstrap_iters: int = 1000  # resamples for the standard errors (0 = none)
    device: str = "auto"  # 'auto', 'cpu' or 'cuda[:N]'
    dtype: str = "float32"  # weights dtype
    offline: bool = True  # forbid hub / dataset downloads (the toy tasks need none)
    out: str = "runs/eval/harness"  # folder for harness.json / harness.md

    def validate(self) -> None:
        if not self.tasks:
            raise ValueError("tasks must name at least one task, tag or group")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"limit must be > 0 or unset, got {self.limit}")
        if not Path(self.model).is_dir():
            raise ValueError(f"model must be a local model folder, got {self.model!r}")


def run_harness(cfg: HarnessConfig) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run ``lm_eval.simple_evaluate`` and write its results as JSON plus the harness's own table."""
    cfg.validate()
    if cfg.offline:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import handle_non_serializable, make_table
    except ImportError as err:  # an optional extra
        raise RuntimeError("lm-evaluation-harness is not installed: pip install 'rodimus[eval]'") from err

    import rodimus  # noqa: F401  (registers the Auto classes the hf adapter uses)

    limit: float | None = cfg.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    model_args = {
        "pretrained": cfg.model,
        "tokenizer": cfg.tokenizer or cfg.model,
        "dtype": cfg.dtype,
        "backend": "causal",
    }
    # indexing the harness's thousands of built-in YAMLs takes a while: skip it when only our tasks run
    ours_only = all(t.startswith("rodimus_toy") for t in cfg.tasks) and not cfg.include_paths
    tm = TaskManager(include_path=[str(TASKS_DIR), *cfg.include_paths], include_defaults=not ours_only)
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_args,
        tasks=list(cfg.tasks),
        task_manager=tm,
        num_fewshot=cfg.num_fewshot,
        batch_size=cfg.batch_size,
        device=str(pick_device(cfg.device)),
        limit=limit,
        bootstrap_iters=cfg.bootstrap_iters,
        log_samples=False,
    )
    if results is None:  # non-zero ranks of a distributed run
        return {}, {}
    out = Path(cfg.out)
    json_path, md_path = out / "harness.json", out / "harness.md"
    payload = {
        "config": asdict(cfg),
        "results": results.get("results", {}),
        "versions": results.get("versions"),
        "n-shot": results.get("n-shot"),
        "n-samples": results.get("n-samples"),
    }
    atomic_write_text(json_path, json.dumps(payload, indent=2, default=handle_non_serializable) + "\n")
    atomic_write_text(md_path, f"# lm-evaluation-harness: {cfg.model}\n\n" + make_table(results) + "\n")
    return payload, {"json": json_path, "markdown": md_path}
