"""Training a Med-DDPM model on one device or many (torchrun + DDP).

Objective: x0 in [-1, 1], t ~ U{0..T-1} per sample, eps ~ N(0, I), loss = L1 (or MSE) between the
network's output for q_sample(x0, t, eps) with the condition and its target (``prediction``: eps as
official, v or x0; see model_options.py); divided by the accumulation count. The learning rate is
constant or follows a cosine (``lr_schedule``), as a function of the step alone.
``weighting="truncated-snr"`` (not official; off by default) weights each noise level by max(1, 1/SNR_t)
in x0 terms (Salimans & Ho 2022), capped at ``MAX_WEIGHT``: at high noise an eps error costs as much as the
x0 error it causes, so the network learns to read the condition where x_t says little. The weighting is
importance-sampled (t drawn with probability proportional to its weight, the loss scaled by the mean
weight): the same expected objective as multiplying the loss, but the rare top noise levels, where the
condition alone decides the image, come up in a quarter of the steps instead of a fiftieth.
Adam (torch defaults but lr); EMA on parameters only, every ``ema_every`` optimiser steps, a plain copy
of the model before ``ema_start``. Checkpoints are the official ``{step, model, ema}`` dict; everything
else needed to continue exactly (optimiser, scaler, RNG states, data position, config) goes in a
sidecar ``<checkpoint>.train-state.pt``, so k steps + resume + N-k steps equal N steps bit for bit.

Distributed: with ``WORLD_SIZE`` > 1 in the environment (torchrun sets it) each process joins the group,
takes its share of every epoch's order and gradients are averaged by DistributedDataParallel; rank 0
alone writes checkpoints and logs. ``step`` always counts optimiser steps.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from MedDDPMSynthLib.data.train_data import EpochOrder
from MedDDPMSynthLib.errors import CheckpointError, OutputError, RuntimeFailure
from MedDDPMSynthLib.io.outputs import atomic_write
from MedDDPMSynthLib.io.write_errors import short_reason, write_advice
from MedDDPMSynthLib.model.checkpoint import read_state_dict, save_official_checkpoint
from MedDDPMSynthLib.model.diffusion import GaussianDiffusion
from MedDDPMSynthLib.model.sampling import PRECISIONS
from MedDDPMSynthLib.progress_bar import progress_bar
from MedDDPMSynthLib.training.distributed import setup_distributed
from MedDDPMSynthLib.training.train_config import LOSSES, TrainConfig
from MedDDPMSynthLib.training.train_state import (SIDECAR_SUFFIX, numpy_state, read_train_state, replace_pair,
                                                  set_numpy_state, sidecar_path)

#: largest loss weight of truncated-snr (for l1; squared for l2): reached from t ~ 0.96 T on the cosine schedule
MAX_WEIGHT = 20.0
LOG_FIELDS = ("step", "loss", "lr", "seconds", "ema")


class _Objective(nn.Module):
    """The loss as ``forward``, since DistributedDataParallel synchronises gradients through forward."""

    def __init__(self, diffusion: GaussianDiffusion, loss: str, scale: float = 1.0):
        super().__init__()
        self.diffusion, self.loss_fn, self.scale = diffusion, LOSSES[loss], scale

    def forward(self, x0, cond, t, noise):
        out = self.diffusion.network(self.diffusion.q_sample(x0, t, noise), cond, t)
        return self.loss_fn(out.float(), self.diffusion.training_target(x0, t, noise)) * self.scale


def loss_weights(alphas_cumprod: torch.Tensor, loss: str) -> torch.Tensor:
    """Truncated-SNR weights per timestep: max(1, 1/SNR) for l2, its square root for l1 (whose error
    scales linearly), capped at MAX_WEIGHT (1/SNR is ~1e7 at the last cosine step)."""
    snr = alphas_cumprod.double() / (1.0 - alphas_cumprod.double())
    weights = (1.0 / snr).clamp(1.0, MAX_WEIGHT ** 2)
    return (weights.sqrt() if loss == "l1" else weights).float()


# ----------------------------------------------------------------------------------------- trainer


class Trainer:
    """Model, EMA, optimiser and data order of one run; ``train()`` runs it, ``save``/``resume`` persist it."""

    def __init__(self, config: TrainConfig, dataset: Dataset, out_dir=None, device: str = "auto", quiet: bool = False):
        config.check()
        self.config, self.dataset, self.quiet = config, dataset, quiet
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.dist, self.device = setup_distributed(device)
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.model = GaussianDiffusion(config.unet(), config.timesteps, prediction=config.prediction).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        # t ~ U{0..T-1}, or (truncated-snr) drawn in proportion to its weight with the loss scaled by the mean weight
        self.t_weights = None if config.weighting == "uniform" else loss_weights(self.model.alphas_cumprod, config.loss)
        scale = 1.0 if self.t_weights is None else float(self.t_weights.mean())
        self.net: nn.Module = _Objective(self.model, config.loss, scale)
        if self.dist.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        # noise and t: one generator per rank on the training device (state saved with the checkpoint)
        self.noise = torch.Generator(self.device).manual_seed(config.seed * 1_000_003 + self.dist.rank + 1)
        self.step, self.samples_seen, self.resumed, self._logs_started = 0, 0, False, False
        self._seconds_offset = 0.0  # training time logged before a resume
        self.history: list[float] = []
        self._started = time.perf_counter()

    # -------------------------------------------------------------------------------- one step

    def _autocast(self):
        dtype = PRECISIONS[self.config.precision]
        return contextlib.nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def train_step(self, batches) -> float:
        """One optimiser step over ``grad_accum`` batches; the mean loss (over ranks too)."""
        cfg = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum):
            image, cond = next(batches)
            self.samples_seen += image.shape[0]
            image, cond = image.to(self.device, non_blocking=True), cond.to(self.device, non_blocking=True)
            t = self.draw_timesteps(image.shape[0])
            noise = torch.randn(image.shape, generator=self.noise, device=self.device)
            last = micro == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if last or self.dist.world == 1 else self.net.no_sync()
            with sync:
                with self._autocast():
                    loss = self.net(image, cond, t, noise) / cfg.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach().float()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        self.update_ema()
        return self._mean_over_ranks(total)

    def draw_timesteps(self, count: int) -> torch.Tensor:
        if self.t_weights is None:
            return torch.randint(0, self.config.timesteps, (count,), generator=self.noise, device=self.device)
        return torch.multinomial(self.t_weights, count, replacement=True, generator=self.noise)

    def _mean_over_ranks(self, total: torch.Tensor) -> float:
        if self.dist.world > 1:
            dist.all_reduce(total)  # SUM (gloo has no AVG)
            total = total / self.dist.world
        value = float(total)
        if not math.isfinite(value):
            raise RuntimeFailure(f"the loss became {value} at step {self.step}; lower --lr or use --precision fp32/bf16")
        return value

    def update_ema(self) -> str:
        """EMA bookkeeping after optimiser step ``self.step``: 'copy', 'average' or '' (no update)."""
        cfg = self.config
        if self.step % cfg.ema_every:
            return ""
        if self.step < cfg.ema_start:
            self.ema.load_state_dict(self.model.state_dict())
            return "copy"
        with torch.no_grad():
            for ema_p, p in zip(self.ema.parameters(), self.model.parameters()):
                ema_p.mul_(cfg.ema_decay).add_(p.detach(), alpha=1.0 - cfg.ema_decay)
            for ema_b, b in zip(self.ema.buffers(), self.model.buffers()):  # buffers are copied, not averaged
                ema_b.copy_(b)
        return "average"

    # ------------------------------------------------------------------------------------ loop

    def _loader(self) -> DataLoader:
        """Endless loader from the current data position. Its own generator seeds workers, so the global RNGs
        (restored on resume, used by augmentations in the main process) advance exactly as in an uninterrupted run."""
        cfg = self.config
        order = EpochOrder(self.dataset, cfg.seed, self.dist.rank, self.dist.world, cfg.batch_size, self.samples_seen)
        return DataLoader(
            self.dataset, batch_size=cfg.batch_size, sampler=order, num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda", drop_last=True,
            generator=torch.Generator().manual_seed(cfg.seed + self.samples_seen),
        )

    def train(self, until: int | None = None) -> list[float]:
        """Train up to optimiser step ``until`` (default ``config.steps``); the losses of this call.

        With ``out_dir``: a checkpoint every ``save_every`` steps and at the end, log rows every ``log_every``.
        Ctrl-C (KeyboardInterrupt) propagates; the last complete checkpoint stays valid."""
        until = self.config.steps if until is None else until
        batches, losses, smoothed = iter(self._loader()), [], None
        bar = progress_bar(total=until, initial=self.step, desc="training", unit="step", file=sys.stderr,
                   disable=self.quiet or not self.dist.main, dynamic_ncols=True)
        with bar:
            while self.step < until:
                try:
                    loss = self.train_step(batches)
                except torch.OutOfMemoryError:
                    raise RuntimeFailure(f"out of {self.device.type.upper()} memory at grid {self.config.grid_xyz}; lower "
                                         "--batch, use --precision bf16, a smaller --grid or --channels") from None
                losses.append(loss)
                smoothed = loss if smoothed is None else 0.98 * smoothed + 0.02 * loss
                bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)
                bar.update(1)
                self._after_step(losses, until)
        self.history.extend(losses)
        return losses

    def _after_step(self, losses: list[float], until: int) -> None:
        cfg = self.config
        if self.step % cfg.log_every == 0 or self.step == until:
            recent = losses[-cfg.log_every:]
            self.log(sum(recent) / len(recent))
        if self.out_dir is not None and (self.step % cfg.save_every == 0 or self.step == until):
            self.save_milestone()

    def log(self, loss: float) -> None:
        """Append a row to ``train_log.csv`` and ``train_log.jsonl`` (rank 0); a fresh run starts new files."""
        if self.out_dir is None or not self.dist.main:
            return
        table, lines = self.out_dir / "train_log.csv", self.out_dir / "train_log.jsonl"
        mode = "a" if self._logs_started or (self.resumed and table.exists()) else "w"
        if mode == "a" and not self._logs_started:
            self._seconds_offset = self._trim_logs(table, lines)
        self._logs_started = True
        row = {"step": self.step, "loss": round(loss, 6), "lr": self.config.lr_at(self.step),
               "seconds": round(self._seconds_offset + time.perf_counter() - self._started, 3),
               "ema": "copy" if self.step < self.config.ema_start else "average"}
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(table, mode, newline="") as csv_file, open(lines, mode) as json_file:
                writer = csv.DictWriter(csv_file, LOG_FIELDS)
                if mode == "w":
                    writer.writeheader()
                writer.writerow(row)
                json_file.write(json.dumps(row) + "\n")
        except OSError as exc:  # the checkpoints written so far stay complete
            raise OutputError(f"cannot write the training log in {self.out_dir}: {short_reason(exc)}; "
                              f"{write_advice(exc)}") from None

    def _trim_logs(self, table: Path, lines: Path) -> float:
        """Drop the rows an interrupted run logged after the checkpoint this run resumed from (they are
        logged again, as the continuation is exact); the training seconds so far."""
        with open(table, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["step"]) < self.step]
        kept = [line for line in lines.read_text().splitlines() if line and json.loads(line)["step"] < self.step] \
            if lines.exists() else []
        with open(table, "w", newline="") as csv_file, open(lines, "w") as json_file:
            writer = csv.DictWriter(csv_file, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
            json_file.writelines(line + "\n" for line in kept)
        return float(rows[-1]["seconds"]) if rows else 0.0

    # -------------------------------------------------------------------------- save / resume

    def _train_state(self) -> dict:
        noise_states = [self.noise.get_state()]
        if self.dist.world > 1:  # every rank's noise generator, so each continues its own stream
            noise_states = [None] * self.dist.world
            dist.all_gather_object(noise_states, self.noise.get_state())
        return {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": numpy_state(),
                "python": random.getstate(),
                "noise": noise_states,
            },
            "world_size": self.dist.world,
            "config": self.config.to_dict(),
        }

    def save(self, path) -> None:
        """Official ``{step, model, ema}`` at ``path`` plus the sidecar, both atomic. Collective under DDP."""
        state = self._train_state()
        if not self.dist.main:
            return
        cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731 - portable files
        # the sidecar first: a failed write (full disk) may leave a state without its checkpoint, which
        # nothing reads, but never a checkpoint without its state
        atomic_write(sidecar_path(path), lambda tmp: torch.save(state, tmp), durable=True)
        try:
            save_official_checkpoint(path, cpu(self.model.state_dict()), cpu(self.ema.state_dict()), self.step,
                                     self.config.options)
        except BaseException:
            Path(sidecar_path(path)).unlink(missing_ok=True)
            raise

    def save_milestone(self) -> Path:
        """``model-<step>.pt`` (+ sidecar), then ``model-last.pt`` replaced atomically by a copy of it."""
        path = self.out_dir / f"model-{self.step}.pt"
        self.save(path)
        if self.dist.main:
            replace_pair(path, self.out_dir / "model-last.pt")
        return path

    def resume(self, path) -> list[str]:
        """Weights, EMA and step from an official checkpoint, all else from its sidecar; warnings returned.
        Without a sidecar (e.g. fine-tuning released weights) the optimiser and random streams start afresh."""
        raw = self._read_checkpoint(Path(path))
        for module, key in ((self.model, "model"), (self.ema, "ema")):
            try:
                module.load_state_dict(raw[key], strict=True)
            except RuntimeError:
                raise CheckpointError(
                    f"{path} ('{key}') does not match this architecture ({self.config.unet()}, T={self.config.timesteps}); "
                    "give the same --channels/--mult/--res-blocks/--attention/--timesteps as the run that wrote it"
                ) from None
        self.step, self.resumed = int(raw["step"]), True
        state = read_train_state(path)
        if state is None:
            self.samples_seen = self.step * self.config.batch_size * self.config.grad_accum
            return [f"{path} has no {SIDECAR_SUFFIX} beside it: the optimiser and random streams start afresh"]
        if int(state["step"]) != self.step:
            raise CheckpointError(f"{sidecar_path(path)} is for step {state['step']}, not {self.step}; resume from a complete pair")
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the saved state carries the old rate: --lr on resume wins
            group["lr"] = self.config.lr
        self.scaler.load_state_dict(state["scaler"])
        self.samples_seen = int(state["samples_seen"])
        return self._restore_rng(state["rng"], int(state.get("world_size", 1)))

    def _read_checkpoint(self, path: Path) -> dict:
        """``{step, model, ema}``: an official-format checkpoint as it is; any other model file (an exported
        .safetensors, a bare state dict) is read as a starting point for fine-tuning, both weights its own."""
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} not found; give a model-<step>.pt or model-last.pt of this run")
        state, info = read_state_dict(path)  # CheckpointError with its own advice for anything unreadable
        if info.container != "official":
            return {"step": info.step or 0, "model": state, "ema": state}
        try:
            raw = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as error:
            raise CheckpointError(f"{path} is unreadable ({type(error).__name__}); resume from an earlier checkpoint") from None
        if not isinstance(raw, dict) or not {"step", "model", "ema"} <= set(raw):
            raise CheckpointError(f"{path} is not an official-format checkpoint ({{step, model, ema}}); give one written by training")
        return raw

    def _restore_rng(self, rng: dict, world: int) -> list[str]:
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
        set_numpy_state(rng["numpy"])
        random.setstate(rng["python"])
        if world != self.dist.world:  # a different process count cannot continue the same streams
            return [f"the checkpoint was trained with {world} process(es), this run has {self.dist.world}: "
                    "the data order and noise continue differently"]
        self.noise.set_state(rng["noise"][self.dist.rank])
        return []

    def close(self) -> None:
        """Leave the process group if this trainer created it."""
        if self.dist.owns_group and dist.is_initialized():
            dist.destroy_process_group()
