"""Train one model of the family; resumable and reproducible.

Batches depend only on (seed, step), so a run resumed from its checkpoint sees exactly the data an
uninterrupted run would. A checkpoint (weights, optimizer, step, log) is written to RUN/ckpt.pt every
--ckpt-every steps and at the end; RUN/ is never committed. The learning-rate schedule is warmup then
cosine decay to 10% over --tokens. With --teacher, the loss mixes cross-entropy on the data with
KL(teacher || student) on the teacher's logits (distillation raises drafter/target agreement);
--teacher-model takes the teacher from an exported model directory instead of a checkpoint.

Usage: python3 tools/train/train.py --model target --tokens 6e6 --run runs/target
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

def _pin_threads() -> None:
    """OpenBLAS and OpenMP start one thread per core unless told; pin them to --threads before
    torch loads, or two trainings on one machine oversubscribe it."""
    n = "1"
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            n = sys.argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, n)


_pin_threads()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from model import FAMILY, Decoder, count_params  # noqa: E402

DOMAINS = ("code", "english")


def load_split(data: Path, split: str) -> dict[str, np.ndarray]:
    return {d: np.fromfile(data / f"{split}.{d}.bin", dtype=np.uint16) for d in DOMAINS}


def batch(streams: dict[str, np.ndarray], weights: dict[str, float], rng: np.random.Generator, bsz: int, seq: int) -> torch.Tensor:
    """bsz random windows of seq+1 tokens; the domain of each row is drawn by weight."""
    names = list(streams)
    p = np.array([weights[n] for n in names])
    rows = []
    for d in rng.choice(len(names), size=bsz, p=p / p.sum()):
        s = streams[names[d]]
        i = int(rng.integers(0, len(s) - seq - 1))
        rows.append(s[i:i + seq + 1].astype(np.int64))
    return torch.from_numpy(np.stack(rows))


@torch.no_grad()
def evaluate(model: Decoder, streams: dict[str, np.ndarray], seq: int, max_tokens: int) -> dict[str, float]:
    """Mean next-token NLL (nats) per domain over consecutive windows of the split."""
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for d, s in streams.items():
        n = min(len(s) - 1, max_tokens) // seq * seq
        x = torch.from_numpy(s[:n + 1].astype(np.int64)).to(device)
        tot, cnt = 0.0, 0
        for i in range(0, n, seq * 8):
            chunk = min(seq * 8, n - i)
            inp = x[i:i + chunk].view(-1, seq)
            tgt = x[i + 1:i + chunk + 1].view(-1, seq)
            tot += F.cross_entropy(model(inp).flatten(0, 1), tgt.flatten(), reduction="sum").item()
            cnt += tgt.numel()
        out[d] = tot / cnt
    model.train()
    return out


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(FAMILY))
    ap.add_argument("--data", default="data/tokens")
    ap.add_argument("--run", required=True, help="directory for checkpoint and log (not committed)")
    ap.add_argument("--tokens", type=float, required=True, help="training tokens for the whole schedule")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="torch device to train on: cpu, cuda, cuda:1, ...")
    ap.add_argument("--dropout", type=float, default=0.0, help="residual dropout while training (exports have none)")
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--init", help="start from this checkpoint's weights (a new phase)")
    ap.add_argument("--init-model", help="start from the weights of an exported model directory (verified against its reference logits)")
    ap.add_argument("--teacher", help="checkpoint of a teacher to distill from")
    ap.add_argument("--teacher-model", help="distil from the weights of an exported model directory instead "
                                            "(verified against its reference logits)")
    ap.add_argument("--distill-weight", type=float, default=0.7)
    ap.add_argument("--teacher-refresh", type=int, default=0, metavar="STEPS",
                    help="reload the teacher checkpoint every STEPS steps (distil from a teacher that is still training)")
    ap.add_argument("--bf16", action="store_true",
                    help="bfloat16 autocast for the forward passes (weights and optimizer stay float32); "
                         "AVX512-BF16/AMX CPUs train several times faster")
    ap.add_argument("--budget-minutes", type=float, default=0,
                    help="size the schedule to this much training time: steps 5-20 are timed and --tokens is "
                         "lowered to what fits (the checkpoint records the resulting --tokens, which reproduces the run)")
    ap.add_argument("--max-minutes", type=float, default=0, help="stop (with a checkpoint) after this wall time; 0 = no limit")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = FAMILY[args.model]
    model = Decoder(cfg)
    model.dropout = args.dropout
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    total_steps = int(args.tokens // (args.batch * args.seq))
    step, log, elapsed = 0, [], 0.0
    prior_teacher_steps: list[dict] = []
    prior_torch: list[str] = []
    ckpt_path = run / "ckpt.pt"
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False, map_location="cpu")
        model.load_state_dict(ck["model"])
        step, log, elapsed = ck["step"], ck["log"], ck.get("elapsed", 0.0)
        if args.budget_minutes:  # the schedule was sized when the run began
            args.tokens = ck["args"]["tokens"]
            total_steps = int(args.tokens // (args.batch * args.seq))
        prior_teacher_steps = ck.get("teacher_steps", [])
        prior_torch = ck.get("torch", [])
        print(f"resumed {args.model} at step {step}/{total_steps}", flush=True)
    elif args.init:
        model.load_state_dict(torch.load(args.init, weights_only=False, map_location="cpu")["model"])
        print(f"initialised {args.model} from {args.init}", flush=True)
    elif args.init_model:
        from onnx_weights import load_from_model_dir
        model.load_state_dict(load_from_model_dir(Path(args.init_model)).state_dict())
        print(f"initialised {args.model} from the exported model in {args.init_model}", flush=True)
    teacher, teacher_steps = None, []

    def load_teacher() -> None:
        nonlocal teacher
        tck = torch.load(args.teacher, weights_only=False, map_location="cpu")
        if teacher is None:
            teacher = Decoder(FAMILY[tck["model_name"]]).to(device)
            teacher.eval()
        teacher.load_state_dict(tck["model"])
        teacher_steps.append({"step": step, "teacher_step": tck["step"]})
        print(f"teacher {args.teacher} at its step {tck['step']}", flush=True)

    if args.teacher and args.teacher_model:
        raise SystemExit("give --teacher or --teacher-model, not both")
    if args.teacher_refresh and not args.teacher:
        raise SystemExit("--teacher-refresh reloads a --teacher checkpoint")
    if args.teacher:
        load_teacher()
    elif args.teacher_model:
        from onnx_weights import load_from_model_dir
        teacher = load_from_model_dir(Path(args.teacher_model)).to(device)
        teacher.eval()
        teacher_steps.append({"step": step, "teacher_model": args.teacher_model})
        print(f"teacher: the exported model in {args.teacher_model}", flush=True)

    model.to(device)
    if ckpt_path.exists():  # optimizer state follows the parameters' device
        opt.load_state_dict(torch.load(ckpt_path, weights_only=False, map_location="cpu")["opt"])
    data = Path(args.data)
    train, val = load_split(data, "train"), load_split(data, "val")
    weights = {d: float(len(s)) for d, s in train.items()}
    print(f"{args.model}: {count_params(model) / 1e6:.2f}M params, {total_steps} steps of {args.batch}x{args.seq}", flush=True)

    def save():
        tmp = run / "ckpt.pt.tmp"
        hw = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        torch.save({"model": {k: v.cpu() for k, v in model.state_dict().items()}, "opt": opt.state_dict(),
                    "step": step, "log": log, "device": hw,
                    "elapsed": elapsed, "model_name": args.model, "args": vars(args),
                    "teacher_steps": prior_teacher_steps + teacher_steps,
                    "torch": sorted(set(prior_torch + [torch.__version__]))}, tmp)
        os.replace(tmp, ckpt_path)

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    if args.budget_minutes and args.warmup <= 20:
        raise SystemExit("--budget-minutes sizes the schedule at step 20: give a --warmup above 20")
    started = time.time()
    t0 = time.time()
    timing = {}
    while step < total_steps:
        if args.budget_minutes and not ckpt_path.exists() and step in (5, 20):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timing[step] = time.time()
            if step == 20:
                per_step = (timing[20] - timing[5]) / 15
                fit = int((args.budget_minutes * 60 - (timing[20] - started)) / per_step) + 20
                if fit < total_steps:
                    total_steps = fit
                    args.tokens = float(total_steps * args.batch * args.seq)
                print(f"{per_step * 1e3:.0f} ms/step: schedule of {total_steps} steps ({args.tokens:.3g} tokens)", flush=True)
        rng = np.random.default_rng([args.seed, step])
        xy = batch(train, weights, rng, args.batch, args.seq).to(device, non_blocking=True)
        x, y = xy[:, :-1], xy[:, 1:]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total_steps, args.lr, args.warmup)
        with autocast():
            logits = model(x).float()
        loss = ce = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        if teacher is not None:
            if args.teacher_refresh and step % args.teacher_refresh == 0 and step > teacher_steps[-1]["step"]:
                load_teacher()
            with torch.no_grad(), autocast():
                tlogp = F.log_softmax(teacher(x).float(), -1)
            kl = F.kl_div(F.log_softmax(logits, -1), tlogp, log_target=True, reduction="batchmean") / args.seq
            loss = args.distill_weight * kl + (1 - args.distill_weight) * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 10 == 0:
            now = time.time()
            elapsed += now - t0
            t0 = now
            tps = step * args.batch * args.seq / max(elapsed, 1e-9)
            print(f"step {step}/{total_steps} loss {ce.item():.3f} lr {opt.param_groups[0]['lr']:.2e} tok/s {tps:.0f}", flush=True)
        if step % args.eval_every == 0 or step == total_steps:
            ev = evaluate(model, val, args.seq, 65536)
            log.append({"step": step, "tokens": step * args.batch * args.seq, "train_loss": ce.item(), "val": ev, "elapsed_s": elapsed})
            print(f"eval step {step}: " + " ".join(f"{k} {v:.3f}" for k, v in ev.items()), flush=True)
        if step % args.ckpt_every == 0 or step == total_steps:
            save()
        if args.max_minutes and time.time() - started > args.max_minutes * 60:
            save()
            print(f"stopping at step {step} after {args.max_minutes} minutes; rerun to resume", flush=True)
            return
        if stop["signal"] is not None:
            save()
            print(f"stopping at step {step} on signal {stop['signal']} with a checkpoint; rerun to resume", flush=True)
            return
    (run / "log.json").write_text(json.dumps(log, indent=1))
    print("done", flush=True)


if __name__ == "__main__":
    main()
