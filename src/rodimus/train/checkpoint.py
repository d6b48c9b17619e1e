"""Atomic, pickle-free training checkpoints.

A checkpoint is a folder `checkpoints/step_XXXXXXXX/` holding
  model.safetensors       full (unsharded) model state
  optimizer.safetensors   optimizer tensors, keyed `state/<param name>/<field>`
  state.json              step, scheduler, data-loader position, RNG states, optimizer param groups,
                          and the size + sha256 of both tensor files
It is written under a temporary name, every file fsync'ed, then renamed into place; only after that is
`checkpoints/latest` (a one-line pointer) replaced atomically. A kill at any moment therefore leaves the
previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

LATEST = "latest"
_FILES = ("model.safetensors", "optimizer.safetensors")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or corrupt (the message names the file)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_fsynced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _unshare(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing memory (tied weights): give every duplicate its own copy."""
    seen, out = set(), {}
    for k, v in sd.items():
        v = v.detach().contiguous()
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        out[k] = v.clone() if key in seen else v
        if key is not None:
            seen.add(key)
    return out


def flatten_optimizer(osd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict keyed by parameter name into tensors + JSON-able rest."""
    tensors, scalars = {}, {}
    for pname, fields in osd["state"].items():
        for f, v in fields.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state/{pname}/{f}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pname}/{f}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in osd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[str, dict] = {}
    for key, v in tensors.items():
        _, pname, f = key.split("/", 2)
        state.setdefault(pname, {})[f] = v
    for key, v in rest["scalars"].items():
        pname, f = key.rsplit("/", 1)
        state.setdefault(pname, {})[f] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    root: str | Path, step: int, model_sd: dict[str, torch.Tensor], optim_sd: dict, state: dict, keep: int = 2
) -> Path:
    """Write one checkpoint atomically and prune all but the newest `keep`. Call on one rank only."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    opt_tensors, opt_rest = flatten_optimizer(optim_sd)
    save_file(_unshare(model_sd), str(tmp / "model.safetensors"))
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    files = {}
    for f in _FILES:
        p = tmp / f
        with open(p, "rb+") as fh:
            os.fsync(fh.fileno())
        files[f] = {"bytes": p.stat().st_size, "sha256": _sha256(p)}
    full_state = {**state, "step": step, "optimizer": opt_rest, "files": files}
    _write_fsynced(tmp / "state.json", json.dumps(full_state, indent=1).encode())
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. final == periodic): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    pointer = root / f".{LATEST}.tmp"
    _write_fsynced(pointer, (name + "\n").encode())
    os.replace(pointer, root / LATEST)
    _fsync_dir(root)
    existing = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in existing[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # leftovers of killed writes
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder `latest` points to (None when there is no checkpoint yet)."""
    root = Path(root)
    pointer = root / LATEST
    if not pointer.is_file():
        existing = sorted(p for p in root.glob("step_*") if (p / "state.json").is_file())
        return existing[-1] if existing else None
    name = pointer.read_text().strip()
    path = root / name
    if not name.startswith("step_") or not path.is_dir():
        raise CheckpointError(f"checkpoint pointer {pointer} names {name!r}, which is not a checkpoint folder")
    return path


def load_checkpoint(path: str | Path, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """Read and check one checkpoint: returns (model state, optimizer state, state.json content)."""
    path = Path(path)
    state_file = path / "state.json"
    hint = f"delete {path} to resume from an earlier checkpoint, or use a new --out"
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint file {state_file} is missing; {hint}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"checkpoint file {state_file} is corrupt or truncated ({e}); {hint}") from e
    if not isinstance(state, dict) or "files" not in state or "step" not in state:
        raise CheckpointError(f"checkpoint file {state_file} lacks its 'step'/'files' entries; {hint}")
    loaded = {}
    for f in _FILES:
        p = path / f
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p} is missing; {hint}")
        want = state["files"].get(f, {})
        size = p.stat().st_size
        if verify and size != want.get("bytes"):
            raise CheckpointError(
                f"checkpoint file {p} is truncated or corrupt: {size} bytes, expected {want.get('bytes')}; {hint}"
            )
        if verify and _sha256(p) != want.get("sha256"):
            raise CheckpointError(f"checkpoint file {p} is corrupt: sha256 mismatch; {hint}")
        try:
            loaded[f] = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint file {p} could not be read ({e}); {hint}") from e
    optim_sd = unflatten_optimizer(loaded["optimizer.safetensors"], state["optimizer"])
    return loaded["model.safetensors"], optim_sd, state
