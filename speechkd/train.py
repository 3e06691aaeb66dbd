"""The one training loop shared by every distillation method.

Methods ("tasks", `speechkd.tasks`) say what a batch is, what its loss is and how the student transcribes,
and may own trainable modules of their own (prediction heads, auxiliary decoders); this module owns
everything else: length-grouped batching (prepared in worker processes with `num_workers`), gradient
accumulation, AdamW with warm-up + decay over the student and the method's modules, the device and mixed
precision (speechkd.devices), multi-process data parallel (`torchrun`: gloo on CPU, NCCL on GPUs),
non-finite-loss checks, periodic dev WER (the method's transcripts, scored here like `speechkd eval` scores
them), atomic checkpoints and *exact* resume. `final/` holds the student alone: a method's modules are
training scaffolding, never part of what is exported.

Exact resume rests on two rules. (1) The batch plan is a pure function of (seed, epoch), so a
resumed run knows which micro-batch comes next from the step count alone. (2) Every random draw of a
step (dropout, SpecAugment, timestamp sampling) comes from generators re-seeded from (seed, step,
rank) at the start of the step, so nothing depends on how many draws happened before a crash. A run
killed at any point and restarted produces the same weights as one that was never interrupted. (With
`num_workers` > 0 a batch is seeded the same way inside its worker, and the loss's draws (dropout) get
their own re-seed: still exact on resume, though not the same draws as a run with `num_workers: 0`.)

    from speechkd.train import RunConfig, train
    final_dir = train(load_config(RunConfig, "conf/train.yaml"), "exp/student")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np
import torch

from speechkd.config import save_config, to_dict
from speechkd.io import JsonlWriter, atomic_directory, atomic_write_json, read_jsonl, read_labels
from speechkd.errors import SpeechkdError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
FINAL_DIR = "final"
STATE_FILE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
TASK_MODULES_FILE = "task_modules.safetensors"  # a method's own trainable modules, in checkpoints only
OPTIMIZER_FILE = "optimizer.pt"
METRICS_FILE = "metrics.jsonl"
SEED_STRIDE = 1_000_003  # separates per-step seeds of different ranks; a prime well above any step count


class TrainingError(SpeechkdError, RuntimeError):
    """Training cannot go on (or start); the message says what happened, where, and what to do."""


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop; method options live in the method's own Config."""

    max_steps: int = 1000  # optimizer steps (each = grad_accum micro-batches per process)
    batch_size: int = 8  # items per micro-batch per process
    grad_accum: int = 1  # micro-batches summed into one optimizer step
    lr: float = 1e-4  # peak learning rate (AdamW), reached after warmup_steps
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    warmup_steps: int = 50  # linear warm-up from 0 to lr
    scheduler: Literal["linear", "cosine", "constant"] = "linear"  # decay after warm-up
    max_grad_norm: float = 1.0  # 0 disables clipping
    eval_every: int = 0  # steps between dev evaluations; 0 = only at the end
    save_every: int = 100  # steps between checkpoints (one is always written at the end)
    log_every: int = 10  # steps between log lines and metrics.jsonl records
    keep_checkpoints: int = 2  # newest checkpoints kept (older ones are deleted)
    seed: int = 0  # data order, dropout and initialisation; a resumed run continues the same stream
    num_threads: int | None = None  # torch intra-op threads per process; None keeps torch's default
    length_group_batches: int = 50  # sort items by length within chunks of this many batches (less padding)
    device: str = "cpu"  # cpu, cuda, cuda:N, mps, or auto (CUDA when available); torchrun: one GPU per process
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # mixed precision: bf16 autocast, or fp16 + loss scaling
    num_workers: int = 0  # processes preparing batches (audio decoding, features) while the model trains

    def validate(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "keep_checkpoints", "log_every", "length_group_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.warmup_steps < 0 or self.eval_every < 0 or self.save_every < 0:
            raise ValueError("warmup_steps, eval_every and save_every must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    """One training run: what to distil into what, from which labels. Saved as `<run>/config.yaml`."""

    method: Literal["whisper_kd", "ctc", "layerwise"] = "whisper_kd"  # the distillation method (speechkd.tasks)
    # (filtered) pseudo-label JSONL from `speechkd label` / `speechkd filter`; a method that needs no text
    # (layerwise) takes any audio manifest, folder or saved dataset
    labels: str = ""
    dev: str | None = None  # held-out data with references for periodic dev WER
    dev_max_utterances: int = 100  # dev utterances decoded at each evaluation
    teacher: str = "bundled:base"  # the teacher the student is cut from / learns the distributions of
    student_type: str = "whisper"  # a speechkd.students type
    student: dict = field(default_factory=dict)  # that type's config
    init_from: str | None = None  # start from a saved student dir (e.g. `speechkd student create`) instead
    method_config: dict = field(default_factory=dict)  # the method's Config (speechkd.tasks.<method>.Config)
    train: TrainConfig = TrainConfig()

    def validate(self) -> None:
        if not self.labels:
            raise ValueError("labels is required: the pseudo-label JSONL (or, for layerwise, the audio) to train on")


class Task(Protocol):
    """What a distillation method provides to the loop (see speechkd.tasks)."""

    dev_batch_size: int  # dev utterances per transcribe call
    language: str | None  # of the transcripts: picks the normaliser applied before scoring dev WER

    def num_items(self) -> int: ...

    def item_length(self, i: int) -> float: ...

    def collate(self, indices: list[int]) -> dict | None: ...

    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]: ...

    def transcribe(self, model: torch.nn.Module, audios: Sequence[np.ndarray]) -> list[str]: ...

    def fingerprint(self) -> dict: ...

    # Optional: `modules() -> dict[str, nn.Module]`, trainable modules the method owns (optimised and
    # checkpointed with the student, left out of final/), and `to(device)` for what the loss runs itself.


# ------------------------------------------------------------------------------------------ processes


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where collectives run (NCCL needs GPU tensors)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return float(t.item()) / self.world


def init_distributed(device: torch.device = torch.device("cpu")) -> Dist:
    """Join the torchrun process group (gloo on CPU, NCCL on GPUs) when launched by torchrun; else one process."""
    from speechkd.devices import dist_backend

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=device)
    if not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend=dist_backend(device))
    return Dist(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size(), device=device)


# ------------------------------------------------------------------------------------------ batching


def batch_plan(lengths: Sequence[float], batch_size: int, seed: int, epoch: int, group: int) -> list[list[int]]:
    """All micro-batches of one epoch: shuffled, then sorted by length inside chunks of `group` batches
    (so a batch holds similar lengths without the epoch being ordered by length), then batches shuffled."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths)).tolist()
    chunk = batch_size * group
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]


def rank_batches(plan: list[list[int]], dist: Dist) -> list[list[int]]:
    """This process's share: every world-th batch, cut so all ranks take the same number of steps."""
    per_rank = len(plan) // dist.world
    return plan[dist.rank::dist.world][:per_rank]


def seed_step(seed: int, step: int, micro: int, rank: int) -> None:
    """Re-seed every generator a step may use (see the module docstring: this is what makes resume exact)."""
    s = (seed * SEED_STRIDE + step) * 1009 + micro * 31 + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def lr_lambda(cfg: TrainConfig):
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        if cfg.scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return factor


# ------------------------------------------------------------------------------------------ checkpoints


def _checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, state: dict, keep: int,
                    modules: torch.nn.Module | None = None) -> Path:
    """Write `checkpoints/step-N/` atomically: into a temp dir, renamed when complete; then prune old ones."""
    from safetensors.torch import save_file

    final = run_dir / CHECKPOINT_DIR / f"step-{step:07d}"
    with atomic_directory(final) as tmp:
        # Tied weights (Whisper's proj_out = embed_tokens) share storage; safetensors wants distinct tensors.
        save_file(_trainable_state(model), str(tmp / MODEL_FILE))
        if modules is not None and len(modules.state_dict()):
            save_file(_trainable_state(modules), str(tmp / TASK_MODULES_FILE))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / OPTIMIZER_FILE)
        atomic_write_json(tmp / STATE_FILE, state)
    for old in _checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(ckpt: Path, model, optimizer, scheduler, modules: torch.nn.Module | None = None) -> dict:
    from safetensors.torch import load_file

    state = json.loads((ckpt / STATE_FILE).read_text())
    device = next(model.parameters()).device
    try:
        model.load_state_dict(load_file(str(ckpt / MODEL_FILE), device=str(device)))
        if modules is not None and len(modules.state_dict()):
            modules.load_state_dict(load_file(str(ckpt / TASK_MODULES_FILE), device=str(device)))
    except (RuntimeError, FileNotFoundError) as e:
        raise TrainingError(f"checkpoint {ckpt} does not fit the student ({str(e)[:300]}); was the student config "
                            f"changed? Train into a new folder") from e
    opt = torch.load(ckpt / OPTIMIZER_FILE, weights_only=True, map_location=device)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    return state


def all_reduce_grads(params: list[torch.nn.Parameter], dist: Dist) -> None:
    """Average gradients over processes in one flat all-reduce.

    Done by hand rather than with DistributedDataParallel because a process whose micro-batch lost every
    item to the skip list has no forward pass to hook, and DDP would then hang the others; here it simply
    contributes zeros.
    """
    if dist.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= dist.world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


# ------------------------------------------------------------------------------------------ the loop


def build_model(run: RunConfig, records: list[dict], method) -> torch.nn.Module:
    from speechkd.students import build_student, get_student_type, load_student

    if run.init_from:
        return load_student(run.init_from)
    vocab = method.make_vocab(run, records) if hasattr(method, "make_vocab") else None
    student = dict(run.student)
    fields = {f.name for f in dataclasses.fields(get_student_type(run.student_type).config_cls)}
    if "teacher" in fields and not student.get("teacher"):
        student["teacher"] = run.teacher  # teacher-initialised students start from the run's teacher
    return build_student(run.student_type, student, vocab=vocab)


def _check_resume(run_dir: Path, run: RunConfig) -> None:
    """A resumed run must be the same run: refuse (and list the differences) if the config changed."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file() or not _checkpoints(run_dir):
        return
    import yaml

    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = to_dict(run)

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(saved), flat(now)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:6])
        raise TrainingError(f"{run_dir} holds checkpoints of a run with a different config ({shown}); resume with "
                            f"the saved config ({saved_path}) or train into a new folder")


def train(run: RunConfig, run_dir: str | os.PathLike, *, progress: bool = True) -> Path:
    """Train (or resume) a student; returns the folder of the final student (`<run_dir>/final`)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from speechkd.devices import autocast, check_precision, grad_scaler, resolve_device, to_device
    from speechkd.runlog import setup_logging
    from speechkd.students import save_student
    from speechkd.tasks import method_module

    cfg = run.train
    out = Path(run_dir)
    device = resolve_device(cfg.device)
    check_precision(device, cfg.precision)
    dist = init_distributed(device)
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    setup_logging(out, "train" if dist.main else f"train.rank{dist.rank}")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    final_dir = out / FINAL_DIR
    _check_resume(out, run)
    if (final_dir / "speechkd_student.json").is_file() and _finished(out, cfg):
        log.info("%s already holds the final student of this run; nothing to do", final_dir)
        return final_dir
    if dist.main:
        save_config(run, out / "config.yaml")

    method = method_module(run.method)
    seed_step(cfg.seed, 0, 0, 0)  # model initialisation is seeded too
    try:
        records = method.read_records(run) if hasattr(method, "read_records") else read_labels(run.labels)
        model = build_model(run, records, method)
        task = method.build(run, out, model)
    except ValueError as e:  # unusable labels, incompatible student/teacher, bad method options: before any work
        raise TrainingError(str(e)) from e
    if run.dev and not hasattr(task, "transcribe"):
        raise TrainingError(f"method {run.method} trains no transcriber, so there is no dev WER to compute; drop `dev`")
    modules = torch.nn.ModuleDict(task.modules() if hasattr(task, "modules") else {})
    model.to(device)
    modules.to(device)
    if hasattr(task, "to"):
        task.to(device)
    if task.num_items() < cfg.batch_size * dist.world:
        raise TrainingError(f"{run.labels}: {task.num_items()} training items is fewer than one batch per process "
                            f"(batch_size {cfg.batch_size} x {dist.world} processes); use a smaller batch_size")

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the student has no trainable parameters (everything frozen?)")
    params += [p for p in modules.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    scaler = grad_scaler(device, cfg.precision)

    step = 0
    ckpts = _checkpoints(out)
    fingerprint = {"run": to_dict(run), "task": task.fingerprint(), "world_size": dist.world}
    if ckpts:
        state = load_checkpoint(ckpts[-1], model, optimizer, scheduler, modules)
        if state.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            raise TrainingError(f"checkpoint {ckpts[-1]} was written for different data or a different number of "
                                f"processes ({state.get('fingerprint', {}).get('world_size')} vs {dist.world}); resume "
                                f"it the same way, or train into a new folder")
        step = state["step"]
        log.info("resuming from %s (step %d)", ckpts[-1], step)

    lengths = [task.item_length(i) for i in range(task.num_items())]
    per_epoch = len(rank_batches(batch_plan(lengths, cfg.batch_size, cfg.seed, 0, cfg.length_group_batches), dist))
    if per_epoch == 0:
        raise TrainingError("not enough items for one batch per process")
    if dist.main:
        _truncate_metrics(out / METRICS_FILE, step)
    metrics = JsonlWriter(out / METRICS_FILE) if dist.main else None
    plans: dict[int, list[list[int]]] = {}

    def micro_batch(m: int) -> list[int]:
        epoch, j = divmod(m, per_epoch)
        if epoch not in plans:
            plans.clear()
            plans[epoch] = rank_batches(batch_plan(lengths, cfg.batch_size, cfg.seed, epoch, cfg.length_group_batches), dist)
        return plans[epoch][j]

    batches = iter(_batch_loader(task, micro_batch, step * cfg.grad_accum, (cfg.max_steps - step) * cfg.grad_accum,
                                 cfg, dist, device))

    # Steps/s and the ETA are tqdm's own; the postfix shows the mean loss since the last log row. While the
    # bar is up, console log lines are printed above it (the log file gets them unchanged).
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {run.method}", unit="step", file=sys.stderr,
               dynamic_ncols=True, disable=not (progress and dist.main))
    with bar, (nullcontext() if bar.disable else logging_redirect_tqdm()):
        model.train()
        modules.train()
        t_start, running = time.perf_counter(), {}
        last_ckpt = ckpts[-1] if ckpts else None
        dev = None  # the dev utterances, read at the first evaluation (by the main process, which scores them)
        while step < cfg.max_steps:
            optimizer.zero_grad(set_to_none=True)
            logs_sum: dict[str, float] = {}
            ids: list[str] = []
            for micro in range(cfg.grad_accum):
                batch = next(batches)  # collated after seed_step(seed, step, micro, rank), here or in a worker
                if cfg.num_workers:
                    seed_step(cfg.seed, step, micro, dist.rank)  # the loss's own draws (dropout)
                if batch is None:  # every item of this micro-batch was skipped (recorded in the skip list)
                    loss, logs = torch.zeros((), device=device), {}
                else:
                    ids += list(batch["ids"])
                    with autocast(device, cfg.precision):
                        loss, logs = task.loss(model, to_device(batch, device))
                finite = dist.mean(float(torch.isfinite(loss.detach()).all()))
                if finite < 1.0:
                    raise TrainingError(
                        f"non-finite loss at step {step + 1} (micro-batch {micro}); batch ids {ids[:8]}; the last "
                        f"good checkpoint is {last_ckpt or 'none yet'}. Hint: check these utterances' labels, or train "
                        f"again into a new folder with a lower train.lr / more warmup_steps (the same folder only "
                        f"resumes the same config)")
                if loss.requires_grad:
                    scaler.scale(loss / cfg.grad_accum).backward()
                for k, v in logs.items():
                    logs_sum[k] = logs_sum.get(k, 0.0) + v / cfg.grad_accum
                logs_sum["loss"] = logs_sum.get("loss", 0.0) + float(loss.detach()) / cfg.grad_accum
            all_reduce_grads(params, dist)
            scaler.unscale_(optimizer)
            if cfg.max_grad_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
                # fp16: an overflow is the loss scale's business (the scaler skips the step and lowers it).
                if not math.isfinite(grad_norm) and not scaler.is_enabled():
                    raise TrainingError(f"non-finite gradient norm at step {step + 1}; batch ids {ids[:8]}; last good "
                                        f"checkpoint {last_ckpt or 'none yet'}. Hint: train into a new folder with a "
                                        f"lower train.lr")
                logs_sum["grad_norm"] = grad_norm
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            for k, v in logs_sum.items():
                running[k] = running.get(k, 0.0) + dist.mean(v)
            running["_n"] = running.get("_n", 0) + 1
            bar.set_postfix(loss=running["loss"] / running["_n"], lr=scheduler.get_last_lr()[0], refresh=False)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                n = running.pop("_n")
                row = {"step": step, "lr": scheduler.get_last_lr()[0],
                       **{k: round(v / n, 5) for k, v in running.items()},
                       "elapsed_s": round(time.perf_counter() - t_start, 1)}
                running = {}
                if metrics is not None:
                    metrics.write(row)
                    log.info("step %d: %s", step, {k: v for k, v in row.items() if k != "step"})
            if run.dev and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps):
                if dev is None and dist.main:
                    dev = read_dev(run)
                _evaluate(task, model, dev, step, dist, metrics, progress)
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
                if dist.main:
                    state = {"step": step, "fingerprint": fingerprint, "time": time.time()}
                    last_ckpt = save_checkpoint(out, step, model, optimizer, scheduler, state, cfg.keep_checkpoints,
                                                modules)
                dist.barrier()
    if metrics is not None:
        metrics.close()
    if dist.main:
        with atomic_directory(final_dir) as tmp:
            save_student(model, tmp)
        log.info("final student saved to %s", final_dir)
    dist.barrier()
    return final_dir


class _MicroBatches(torch.utils.data.Dataset):
    """Micro-batches `first`, `first + 1`, ... collated by the task, each right after seed_step(seed, step, micro,
    rank): in this process (num_workers 0: exactly the old order of draws) or in a data-loader worker."""

    def __init__(self, task, micro_batch, first: int, count: int, cfg: TrainConfig, rank: int):
        self.task, self.micro_batch, self.first, self.count, self.cfg, self.rank = (task, micro_batch, first, count,
                                                                                    cfg, rank)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int) -> dict | None:
        m = self.first + k
        step, micro = divmod(m, self.cfg.grad_accum)
        seed_step(self.cfg.seed, step, micro, self.rank)
        return self.task.collate(self.micro_batch(m))


def _keep(item):
    return item


def _batch_loader(task, micro_batch, first: int, count: int, cfg: TrainConfig, dist: Dist, device: torch.device):
    workers = cfg.num_workers
    return torch.utils.data.DataLoader(_MicroBatches(task, micro_batch, first, count, cfg, dist.rank), batch_size=None,
                                       shuffle=False, num_workers=workers, collate_fn=_keep,
                                       prefetch_factor=2 if workers else None, pin_memory=device.type == "cuda")


def _finished(out: Path, cfg: TrainConfig) -> bool:
    ckpts = _checkpoints(out)
    return bool(ckpts) and json.loads((ckpts[-1] / STATE_FILE).read_text())["step"] >= cfg.max_steps


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric rows written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    from speechkd.io import write_jsonl

    write_jsonl(path, rows)


def read_dev(run: RunConfig) -> list:
    """The dev utterances (with references) scored during training: the first dev_max_utterances of run.dev."""
    from speechkd.data import open_data

    utts = open_data(run.dev, require_text=True)
    return utts[: run.dev_max_utterances] if run.dev_max_utterances else utts


def dev_scores(task: Task, model: torch.nn.Module, utterances: Sequence, *, progress: bool = False) -> dict[str, float]:
    """dev_wer/dev_cer (%) of the task's transcripts of `utterances`, computed as `speechkd eval` computes WER
    (speechkd.evaluate.evaluate): shortest first in batches of task.dev_batch_size, references and transcripts
    normalised for task.language. The same batches as there, so the numbers match an eval of the checkpoint."""
    from tqdm import tqdm

    from speechkd.data import iter_audio
    from speechkd.metrics import score

    items = list(iter_audio(utterances))
    if not items:
        raise ValueError(f"nothing to evaluate: all {len(utterances)} dev utterances were skipped (see the warnings)")
    order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
    hyps: dict[int, str] = {}
    with tqdm(total=len(items), desc="dev", unit="utt", leave=False, file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(order), task.dev_batch_size):
            idx = order[start: start + task.dev_batch_size]
            hyps.update(zip(idx, task.transcribe(model, [items[i][1] for i in idx])))
            bar.update(len(idx))
    result = score([u.text or "" for u, _ in items], [hyps[i] for i in range(len(items))], language=task.language,
                   with_alignment=False)
    return {"dev_wer": result.wer, "dev_cer": result.cer}


def _evaluate(task, model, dev, step: int, dist: Dist, metrics, progress: bool) -> None:
    if dist.main:
        model.eval()
        try:
            with torch.inference_mode():
                result = dev_scores(task, model, dev, progress=progress)
        finally:
            model.train()
        log.info("step %d dev: %s", step, result)
        if metrics is not None:
            metrics.write({"step": step, **result})
    dist.barrier()
