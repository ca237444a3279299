"""``python -m tools train DATA --out RUN``: train a face recogniser with a margin loss, from scratch or fine-tuned.

DATA is a folder of aligned crops by identity (``labels.csv`` or one sub-folder per person, as
``python -m tools align-dataset`` writes it). Identities are split into training and held-out validation (disjoint).
Each epoch is validated through the kiosk's own evaluation code: on the held-out identities and, when given (default:
``$KIOSK_TEST_DATA/lfw/pairs.csv`` when present), on a pairs file of unaligned photos that the kiosk's detector
aligns exactly as the door does. Epoch 0 is the network before training: the figure every later epoch is compared to.

RUN receives ``log.json`` (configuration, machine, one record per epoch), ``plot.png`` (loss and validation accuracy
by epoch), ``checkpoint.pt`` (everything ``--resume`` needs), ``backbone.pt`` (the best epoch by validation
accuracy) and ``backbone-last.pt`` (the last epoch), which ``python -m tools export --checkpoint RUN/backbone.pt``
turns into a gated, registered model.

CUDA and mixed precision (fp16 autocast with a gradient scaler) are used when a GPU is present (``--device``,
``--amp``); on a CPU training is fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kiosk.lab import machine
from kiosk.recognition.align import TEMPLATES, get_template
from tools import ROOT
from tools.errors import ToolError, run_tool
from tools.train.backbones import BACKBONES, INITS, Trained, create, load_trained, save_backbone
from tools.train.data import AUGMENTS, Batches, Split, input_spec, load_crops, scan, split
from tools.train.heads import HEAD_INITS, HEADS, Head, build_head
from tools.train.plot import plot_training
from tools.train.validate import HeldOutValidation, PairsValidation, embedder_for

CHECKPOINT = "checkpoint.pt"
BACKBONE = "backbone.pt"
BACKBONE_LAST = "backbone-last.pt"
LOG = "log.json"
PLOT = "plot.png"


class TrainError(ToolError):
    """A one-line reason training cannot start or go on."""


def default_pairs() -> Path | None:
    data = os.environ.get("KIOSK_TEST_DATA")
    root = Path(data) if data else ROOT.parent / "shared" / "data" / "faces"
    pairs = root / "lfw" / "pairs.csv"
    return pairs if pairs.is_file() else None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools train",
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("data", type=Path, help="folder of aligned crops: labels.csv (path,identity) or one folder a person")
    p.add_argument("--out", type=Path, required=True, help="run folder (log.json, plot.png, checkpoints)")
    p.add_argument(
        "--data-template",
        default="arcface_112",
        choices=sorted(TEMPLATES),
        help="the template DATA's crops are aligned to (align-dataset's default)",
    )
    p.add_argument("--arch", choices=list(BACKBONES), default="mobilefacenet-s1", help="backbone")
    p.add_argument("--features", type=int, help="embedding size (default: the backbone's)")
    p.add_argument(
        "--init",
        help=f"start from pretrained weights ({', '.join(INITS)}) or a checkpoint file (backbone.pt, arcface_torch "
        "backbone.pth); default: from scratch",
    )
    p.add_argument("--loss", choices=list(HEADS), default="arcface", help="classification head")
    p.add_argument("--scale", type=float, help="logit scale s (default: the loss's, 64 for margin losses)")
    p.add_argument("--margin", type=float, help="margin m (default: arcface 0.5, cosface 0.35, combined 0.3)")
    p.add_argument("--margin-warmup", type=float, default=1.0, help="epochs over which the margin ramps up from 0")
    p.add_argument(
        "--head-init",
        choices=HEAD_INITS,
        default="small",
        help="margin heads' class centres: arcface_torch's normal(std 0.01), or scaled to unit length",
    )
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (head; backbone: x --backbone-lr)")
    p.add_argument("--backbone-lr", type=float, default=1.0, help="backbone learning-rate multiplier (fine-tune: 0.1)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear learning-rate warm-up, then cosine to 0")
    p.add_argument("--freeze-epochs", type=float, default=0.0, help="train only the head this long first (fine-tuning)")
    p.add_argument("--augment", choices=list(AUGMENTS), default="standard")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of identities held out for validation")
    p.add_argument("--min-images", type=int, default=2, help="identities with fewer photos are left out")
    p.add_argument("--limit-identities", type=int, help="use only this many identities (quick runs)")
    p.add_argument(
        "--val-pairs",
        type=Path,
        default=default_pairs(),
        help="pairs CSV of unaligned photos validated each epoch (default: $KIOSK_TEST_DATA/lfw/pairs.csv)",
    )
    p.add_argument("--val-root", type=Path, help="folder the --val-pairs paths are relative to (default: its folder)")
    p.add_argument("--no-val-pairs", action="store_true", help="validate on the held-out identities only")
    p.add_argument("--models-dir", type=Path, help="models folder whose detector aligns --val-pairs (default models/)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--amp", choices=("auto", "on", "off"), default="auto", help="mixed precision (CUDA only)")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    p.add_argument("--force", action="store_true", help="start over in a run folder that already holds a run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: only on a terminal)")
    return p


# --------------------------------------------------------------------------------------------------- helpers


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available to PyTorch", code=2)
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _summary_pairs(r: dict[str, Any]) -> dict[str, Any]:
    tar = r["tar_at_far"]
    return {
        "accuracy": r["accuracy_mean"],
        "accuracy_std": r["accuracy_std"],
        "roc_auc": r["roc_auc"],
        "tar_at_far_1e-3": None if tar.get("1e-3") is None else tar["1e-3"]["tar"],
        "n_pairs": r["n_pairs"],
        "n_failed": r["n_failed"],
    }


def _summary_labels(r: dict[str, Any]) -> dict[str, Any]:
    fnmr = r["fnmr_at_fmr"]
    return {
        "fnmr_at_fmr_1e-3": None if fnmr.get("1e-3") is None else fnmr["1e-3"]["fnmr"],
        "fnmr_at_fmr_1e-4": None if fnmr.get("1e-4") is None else fnmr["1e-4"]["fnmr"],
        "rank1": r["rank1"],
        "n_images": r["n_images"],
        "n_identities": r["n_identities"],
        "n_impostor": r["n_impostor"],
    }


class Progress:
    """tqdm on a terminal (or when asked), one line per epoch otherwise."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(total=total, desc=desc, unit="batch", dynamic_ncols=True, leave=False, file=sys.stderr)

    def update(self, n: int, **postfix: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------------- the run


class Run:
    def __init__(self, args: argparse.Namespace, argv: list[str] | None = None) -> None:
        self.args = args
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.out: Path = args.out
        self.device = pick_device(args.device)
        self.amp = self.device.type == "cuda" and args.amp != "off"
        if args.amp == "on" and self.device.type != "cuda":
            raise TrainError("--amp on needs CUDA: on a CPU training runs in fp32", code=2)
        self.progress = not args.no_progress and sys.stderr.isatty()
        self.log: dict[str, Any] = {}

    # ---- setup

    def prepare(self) -> None:
        args = self.args
        if args.threads:
            torch.set_num_threads(args.threads)
        state: dict[str, Any] | None = None
        if args.resume:
            state = self._load_state()
        elif self.out.exists() and any(self.out.iterdir()) and not args.force:
            raise TrainError(f"{self.out} already holds a run: --resume to continue it, --force to start over", code=2)
        samples = scan(args.data)
        self.out.mkdir(parents=True, exist_ok=True)
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)

        self.split: Split = split(
            samples,
            val_fraction=args.val_fraction,
            seed=args.seed,
            min_images=args.min_images,
            limit_identities=args.limit_identities,
        )
        if state is None:
            self.trained, init_prov = create(args.arch, args.features, args.init)
        else:
            self.trained, init_prov = self._restore_backbone(state), json.loads(state["log_json"])["backbone"]["init"]
        spec = input_spec(self.trained.input)
        assert spec.size is not None
        self.spec, self.size = spec, spec.size
        print(
            f"train: {len(self.split.train)} images of {len(self.split.classes)} identities for training, "
            f"{len(self.split.val)} of {len({s.identity for s in self.split.val})} held out; "
            f"loading crops at {self.size[0]}x{self.size[1]} ({args.data_template} -> {self.trained.arch}'s framing)",
            flush=True,
        )
        t0 = time.perf_counter()
        templates = (get_template(args.data_template), get_template(self.trained.align_template))
        crops = load_crops(args.data, self.split.train, *templates)
        index = {c: i for i, c in enumerate(self.split.classes)}
        labels = np.asarray([index[s.identity] for s in self.split.train], dtype=np.int64)
        self.batches = Batches(crops, labels, spec, args.batch_size, AUGMENTS[args.augment])
        self.heldout = (
            HeldOutValidation(args.data, self.split.val, templates, self.out, args.seed) if self.split.val else None
        )
        print(f"train: crops loaded in {time.perf_counter() - t0:.1f} s", flush=True)
        self.pairs: PairsValidation | None = None
        if args.val_pairs is not None and not args.no_val_pairs:
            if not args.val_pairs.is_file():
                raise TrainError(f"--val-pairs {args.val_pairs}: file not found", code=2)
            t0 = time.perf_counter()
            self.pairs = PairsValidation(
                args.val_pairs, args.val_root, self.trained.align_template, models_dir=args.models_dir
            )
            print(
                f"train: {args.val_pairs.name}: {len(self.pairs.crops)} photos aligned by the kiosk's detector, "
                f"{len(self.pairs.failures)} without a face, {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
        if self.heldout is None and self.pairs is None:
            raise TrainError("nothing to validate on: --val-fraction 0 and no --val-pairs", code=2)

        model = self.trained.module.to(self.device)
        if self.device.type == "cpu":
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
        self.head: Head = build_head(
            args.loss, self.trained.num_features, len(self.split.classes), args.scale, args.margin, args.head_init
        ).to(self.device)
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for p in model.parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": args.weight_decay, "lr_mult": args.backbone_lr},
            {"params": no_decay, "weight_decay": 0.0, "lr_mult": args.backbone_lr},
            {"params": list(self.head.parameters()), "weight_decay": args.weight_decay, "lr_mult": 1.0},
        ]
        if args.optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, nesterov=True)
        else:
            self.opt = torch.optim.AdamW(groups, lr=args.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.steps_per_epoch = len(self.batches)
        self.total_steps = self.steps_per_epoch * args.epochs
        self.step = 0
        self.epoch = 0
        self.best: dict[str, Any] | None = None
        self.rng = np.random.default_rng(args.seed)
        n_params = sum(p.numel() for p in model.parameters())
        self.log = {
            "command": "python -m tools train " + shlex.join(self.argv),
            "git_commit": git_commit(),
            "machine": {**machine.describe(), "device": str(self.device), "torch": torch.__version__},
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "data": {"root": args.data.name, **self.split.describe()},
            "backbone": {
                "arch": self.trained.arch,
                "features": self.trained.num_features,
                "parameters": n_params,
                "input": self.trained.input,
                "align_template": self.trained.align_template,
                "init": init_prov,
            },
            "head": {"loss": args.loss, "classes": len(self.split.classes), "note": HEADS[args.loss].note},
            "amp": self.amp,
            "epochs": [],
        }
        if state is not None:
            self._restore_training(state)

    def _load_state(self) -> dict[str, Any]:
        path = self.out / CHECKPOINT
        if not path.is_file():
            raise TrainError(f"--resume: {path} not found", code=2)
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a torn or foreign file
            raise TrainError(f"--resume: {path} is not a training checkpoint ({type(exc).__name__})") from None
        saved = state.get("args", {})
        keys = ("arch", "features", "loss", "batch_size", "seed", "val_fraction", "min_images", "limit_identities")
        for key in (*keys, "head_init"):
            if key in saved:
                setattr(self.args, key, saved[key])
        self.args.init = saved.get("init")
        return state

    def _restore_backbone(self, state: dict[str, Any]) -> Trained:
        t = state["backbone"]
        trained, _ = create(t["arch"], t["num_features"], None)
        trained.module.load_state_dict(state["model"], strict=True)
        trained.input, trained.align_template, trained.family = t["input"], t["align_template"], t["family"]
        return trained

    def _restore_training(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"], strict=True)
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.best = int(state["step"]), int(state["epoch"]), state.get("best")
        self.rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        self.log = json.loads(state["log_json"])
        self.log.setdefault("resumed", []).append({"at_epoch": self.epoch, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        print(f"train: resumed {self.out} after epoch {self.epoch} (step {self.step})", flush=True)

    # ---- one epoch

    def set_lr(self) -> None:
        warmup = int(self.args.warmup_epochs * self.steps_per_epoch)
        factor = lr_factor(self.step, self.total_steps, warmup)
        for group in self.opt.param_groups:
            group["lr"] = self.args.lr * factor * group["lr_mult"]

    def train_epoch(self) -> dict[str, Any]:
        args = self.args
        frozen_until = int(args.freeze_epochs * self.steps_per_epoch)
        margin_steps = max(1, int(args.margin_warmup * self.steps_per_epoch))
        self.model.train()
        bar = Progress(self.steps_per_epoch, f"epoch {self.epoch + 1}/{args.epochs}", self.progress)
        losses, correct, seen = 0.0, 0, 0
        started = time.perf_counter()
        for x_np, y_np in self.batches.epoch(self.rng):
            frozen = self.step < frozen_until
            for p in self.model.parameters():
                p.requires_grad_(not frozen)
            if frozen:
                self.model.eval()  # BatchNorm statistics stay those of the pretrained network
            else:
                self.model.train()
            self.head.set_margin_scale(self.step / margin_steps)
            self.set_lr()
            x = torch.from_numpy(x_np).to(self.device)
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(y_np).to(self.device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                emb = self.model(x)
                logits = self.head(emb, y)
                loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise TrainError(
                    f"the loss became {loss.item()} at step {self.step}: "
                    "lower --lr or --scale, or raise --margin-warmup"
                )
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 10.0)
            self.scaler.step(self.opt)
            self.scaler.update()
            with torch.no_grad():
                pred = self.head.logits(emb.float()).argmax(1)
            correct += int((pred == y).sum())
            seen += len(y)
            losses += loss.item() * len(y)
            self.step += 1
            bar.update(1, loss=f"{loss.item():.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        seconds = time.perf_counter() - started
        return {
            "loss": losses / max(1, seen),
            "train_accuracy": correct / max(1, seen),
            "lr_end": self.opt.param_groups[2]["lr"],
            "margin_scale": self.head.margin_scale,
            "seconds_train": round(seconds, 2),
            "images_per_s": round(seen / seconds, 2) if seconds > 0 else None,
            "images": seen,
        }

    def validate(self) -> dict[str, Any]:
        started = time.perf_counter()
        embedder = embedder_for(
            self.model, self.device, self.spec, self.trained.num_features, f"train:{self.out.name}:{self.epoch}"
        )
        out: dict[str, Any] = {}
        if self.heldout is not None:
            r = self.heldout.run(embedder, f"heldout:{self.epoch}")
            out["heldout"] = {"all_pairs": _summary_labels(r["labels"])}
            if "pairs" in r:
                out["heldout"]["pairs"] = _summary_pairs(r["pairs"])
        if self.pairs is not None:
            out["pairs"] = {
                "file": self.pairs.csv.name,
                **_summary_pairs(self.pairs.run(embedder, f"pairs:{self.epoch}")),
            }
        out["seconds_val"] = round(time.perf_counter() - started, 2)
        return out

    def score(self, val: dict[str, Any]) -> float:
        if "pairs" in val:
            return float(val["pairs"]["accuracy"])
        held = val.get("heldout", {})
        if "pairs" in held:
            return float(held["pairs"]["accuracy"])
        return 1.0 - float(held["all_pairs"]["fnmr_at_fmr_1e-3"] or 1.0)

    # ---- persistence

    def save(self) -> None:
        state = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
            "backbone": {
                "arch": self.trained.arch,
                "num_features": self.trained.num_features,
                "input": self.trained.input,
                "align_template": self.trained.align_template,
                "family": self.trained.family,
            },
            "model": self.model.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "best": self.best,
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            # as JSON text: the log holds numpy scalars, which torch.load(weights_only=True) refuses to unpickle
            "log_json": json.dumps(self.log, default=float),
        }
        tmp = self.out / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        tmp.replace(self.out / CHECKPOINT)

    def write_log(self) -> None:
        self.log["machine"]["loadavg_end"] = machine.loadavg()
        self.log["best"] = self.best
        tmp = self.out / (LOG + ".tmp")
        tmp.write_text(json.dumps(self.log, indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.out / LOG)
        plot_training(self.out / PLOT, self.log)

    def record(self, entry: dict[str, Any]) -> None:
        self.log["epochs"].append(entry)
        val = entry["val"]
        self.trained.training = {  # what backbone.pt says about itself
            "run": self.out.name,
            "epoch": self.epoch,
            "loss": self.args.loss,
            "data": self.log["data"],
            "validation": val,
            "init": self.log["backbone"]["init"],
        }
        value = self.score(val)
        if self.best is None or value > self.best["score"]:
            self.best = {"epoch": self.epoch, "score": float(value)}
            save_backbone(self.out / BACKBONE, self.trained)  # trained.module is self.model
        save_backbone(self.out / BACKBONE_LAST, self.trained)
        self.save()
        self.write_log()
        print(describe_epoch(entry), flush=True)

    # ---- main loop

    def run(self) -> dict[str, Any]:
        self.prepare()
        if not self.log["epochs"]:
            entry = {"epoch": 0, "note": "before training", "val": self.validate()}
            self.record(entry)
        while self.epoch < self.args.epochs:
            train = self.train_epoch()
            self.epoch += 1
            entry = {"epoch": self.epoch, **train, "val": self.validate()}
            entry["loadavg"] = machine.loadavg()
            self.record(entry)
        print(f"train: best epoch {self.best['epoch'] if self.best else '-'}; {self.out / BACKBONE}", flush=True)
        return self.log


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.2f} %"


def describe_epoch(e: dict[str, Any]) -> str:
    parts = [f"epoch {e['epoch']}"]
    if "loss" in e:
        parts.append(f"loss {e['loss']:.3f} train acc {_pct(e['train_accuracy'])} {e['seconds_train']:.0f} s")
    val = e["val"]
    if "pairs" in val:
        pv = val["pairs"]
        parts.append(f"{pv['file']} acc {_pct(pv['accuracy'])} TAR@FAR1e-3 {_pct(pv['tar_at_far_1e-3'])}")
    held = val.get("heldout")
    if held and "pairs" in held:
        parts.append(f"held-out acc {_pct(held['pairs']['accuracy'])}")
    if held:
        parts.append(f"held-out FNMR@1e-3 {_pct(held['all_pairs']['fnmr_at_fmr_1e-3'])}")
    return "train: " + " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def body() -> int:
        try:
            Run(args, argv).run()
        except KeyboardInterrupt:
            print("train: interrupted; the last finished epoch is in checkpoint.pt (--resume)", file=sys.stderr)
            return 130
        return 0

    return run_tool("train", body)


__all__ = ["Run", "load_trained", "main", "parser"]

if __name__ == "__main__":
    sys.exit(main())
