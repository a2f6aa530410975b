"""One device call that trains, validates and exports the default emulator (issue #15).

Everything runs against a wall-clock budget (``--budget`` seconds, default 540 for a
10-minute call) so the call returns with results, never killed half-way:

1. environment (GPU, torch, lightning) -> ``$OUT/lease.log``;
2. data: unpack a carried dataset (``--transport .transport/pm64.npz``, see
   ``transport_dataset.py``), or use ``--dataset DIR``, or simulate ``--generate N``
   simulations with ``--preset`` on the device (``diffhmc dataset generate --device``;
   its maps/min is recorded: the GPU simulator benchmark of issue #16);
3. training from the shipped weights (``init_from``; ``--fresh`` to start from scratch)
   with ``--batch`` maps per step, the learning rate scaled linearly from the default's
   batch 32 (capped at ``--max-lr``), bf16 autocast on a GPU, until the training share of
   the budget is spent; images/s is logged from the first ``--log-every`` steps on;
4. ``validate-emulator`` on ``--val-cosmologies`` validation simulations with DDIM-50 and
   with DDPM-1000 (each skipped, and said so, when the budget is short);
5. the EMA weights exported for inference (``$OUT/default.pt``), the training log and
   checkpoint split in 15 MB parts (``$OUT/last.pt.part-*``: ``cat`` them to resume), and
   ``$OUT/lease.json`` with every phase's seconds, images/s and the validation medians;
6. posterior timings with the new weights (``benchmarks/bench_posterior_gpu.py``:
   ``$OUT/posterior_gpu.json``) in the ``--posterior-share`` of the budget left at the end.

With ``--generate``, a probe of 8 simulations measures the device's rate first and the set
is sized to at most 35% of the time left (never more than ``N``).

    # on the device machine (carry .transport/ or nothing when generating):
    python scripts/gpu/emulator_lease.py --out $OUT --transport .transport/pm64.npz
    python scripts/gpu/emulator_lease.py --out $OUT --generate 1000 --preset fidelity
    # rehearsal on the CPU (the test does this):
    python scripts/gpu/emulator_lease.py --out /tmp/lease --tiny --budget 90
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = [
    "model.base_channels=8",
    "model.channel_mults=[1,2]",
    "model.attention_levels=[false,true]",
    "schedule.n_steps=20",
    "val_maps=4",
]
TINY_SIM = ["n_particles=16", "n_mesh=16", "n_steps=3", "map_resolution=16", "n_slabs=2"]


class Lease:
    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.budget, self.t0 = out, budget, time.perf_counter()
        self.record: dict[str, Any] = {"budget_s": budget, "phases": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "lease.log", "a", buffering=1)  # noqa: SIM115

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def say(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:6.0f} s] {msg}"
        print(line, flush=True)
        self.log.write(line + "\n")

    def run(self, name: str, cmd: list[str], timeout: float) -> bool:
        """Run ``cmd`` (output teed to the log) within ``timeout`` seconds."""
        self.say(f"{name}: {' '.join(cmd)}")
        t = time.perf_counter()
        # the device image has its own torch/lightning: the package runs from src/ uninstalled
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        env["PYTHONUNBUFFERED"] = "1"
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env
        ) as p:
            assert p.stdout is not None
            # the budget is enforced by a timer, also while the output is being read
            timer = threading.Timer(max(1.0, timeout), p.kill)
            timer.start()
            shown = 0.0
            for line in p.stdout:
                self.log.write(line)
                # progress bars (img_s = images/s while training) at most every 15 s
                bar = "it/s" in line or "img_s" in line or "s/it" in line
                if not bar or time.perf_counter() - shown > 15:
                    print(line.rstrip("\n"), flush=True)
                    shown = time.perf_counter() if bar else shown
            p.wait()
            timed_out = not timer.is_alive()
            timer.cancel()
        ok = p.returncode == 0 and not timed_out
        sec = time.perf_counter() - t
        self.record["phases"][name] = {"seconds": sec, "ok": ok, "timed_out": timed_out}
        state = (
            "ok"
            if ok
            else ("STOPPED by the budget" if timed_out else f"FAILED (rc {p.returncode})")
        )
        self.say(f"{name}: {state} in {sec:.0f} s")
        return ok

    def save(self) -> None:
        (self.out / "lease.json").write_text(json.dumps(self.record, indent=1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=540.0, help="wall seconds for everything")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--transport", type=Path, default=None, help="packed dataset to unpack")
    ap.add_argument("--dataset", type=Path, default=None, help="an existing dataset folder")
    ap.add_argument("--generate", type=int, default=0, help="simulate N simulations here")
    ap.add_argument("--preset", default="default", help="simulator preset for --generate")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--max-lr", type=float, default=5e-4, help="cap (warm start: keep it low)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--fresh", action="store_true", help="do not warm-start")
    ap.add_argument("--val-cosmologies", type=int, default=20)
    ap.add_argument("--val-share", type=float, default=0.22, help="budget kept for validation")
    ap.add_argument(
        "--posterior-share", type=float, default=0.1, help="budget kept for posterior timing"
    )
    ap.add_argument("--tiny", action="store_true", help="CPU rehearsal: tiny data and model")
    ap.add_argument(
        "--train-seconds", type=float, default=0.0, help="training time (0: the budget's share)"
    )
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    lease = Lease(args.out, args.budget)
    py = [sys.executable, "-m", "diffhmc"]
    lease.record.update({"device": device, "argv": sys.argv[1:], "torch": torch.__version__})
    if device.startswith("cuda"):
        lease.record["gpu"] = torch.cuda.get_device_name(0)
    lease.say(f"device {device} ({lease.record.get('gpu', 'no GPU')}), torch {torch.__version__}")

    # 2. data
    data = args.dataset or (args.out / "data" if args.tiny else ROOT / "data" / "lease_pm64")
    if args.transport is not None:
        unpack = [sys.executable, "scripts/gpu/transport_dataset.py", "unpack"]
        ok = lease.run("unpack", [*unpack, str(args.transport), str(data)], lease.left())
    elif args.generate and (data / "meta.json").is_file():
        ok = True  # a warm machine: the dataset of an earlier call is complete
        lease.say(f"dataset {data}: already generated, reused")
    elif args.generate:
        sim = [f"--set={s}" for s in TINY_SIM] if args.tiny else []
        gen = [*py, "dataset", "generate", "--seed", "0", "--preset", args.preset,
               "--device", device, "--workers", "1", *sim]  # fmt: skip
        # a probe of a few simulations sizes the set to the budget (its rate includes the
        # start-up, so it errs on the small side); at most 35% of what is left is spent
        n_probe = min(8, args.generate)
        t = time.perf_counter()
        ok = lease.run(
            "generate_probe",
            [*gen, "--out", str(args.out / "probe"), "--n-sims", str(n_probe)],
            0.15 * lease.left(),
        )
        per_sim = (time.perf_counter() - t) / n_probe
        n_sims = min(args.generate, max(n_probe, int(0.35 * lease.left() / per_sim)))
        lease.say(f"probe: {per_sim:.2f} s per simulation -> {n_sims} simulations")
        t = time.perf_counter()
        ok = ok and lease.run(
            "generate", [*gen, "--out", str(data), "--n-sims", str(n_sims)], 0.45 * lease.left()
        )
        if ok:
            sec = time.perf_counter() - t
            meta = json.loads((data / "meta.json").read_text())
            n_maps = int(meta.get("n_maps", 0)) or n_sims * 15
            lease.record["generate"] = {
                "n_sims": n_sims,
                "n_sims_asked": args.generate,
                "probe_seconds_per_sim": per_sim,
                "preset": args.preset,
                "seconds": sec,
                "maps_per_minute": 60.0 * n_maps / sec,
            }
    else:
        ok = (data / "meta.json").is_file()
        lease.say(f"dataset {data}: {'found' if ok else 'MISSING'}")
    if not ok:
        lease.save()
        return 2

    # 3. training
    lr = min(args.max_lr, 2e-4 * args.batch / 32)
    left = lease.left()
    share = 1.0 - args.val_share - args.posterior_share
    train_s = args.train_seconds or max(10.0, left * share - 30.0)
    run = args.out / "run"
    sets = [
        f"dataset={data}", f"batch_size={args.batch}", f"lr={lr}", "warmup_steps=200",
        f"time_limit_s={train_s}", "max_steps=10000000", f"log_every={args.log_every}",
        "val_every=1000000", "ckpt_every=1000000",
    ]  # fmt: skip
    if args.tiny:
        sets += [*TINY_MODEL, "accelerator=cpu", "warmup_steps=1"]
    elif not args.fresh:
        sets.append("init_from=shipped")
    cfg = [] if args.tiny else ["--config", "configs/train_default.yaml"]
    ok = lease.run(
        "train",
        [*py, "train", *cfg, "--out", str(run), *(f"--set={s}" for s in sets)],
        train_s + 120,
    )
    lease.record["train"] = {"batch": args.batch, "lr": lr, "time_limit_s": train_s}
    log = run / "log.csv"
    if log.is_file():
        rows = log.read_text().strip().splitlines()
        head, last = rows[0].split(","), rows[-1].split(",")
        rates = [float(r.split(",")[head.index("images_per_s")]) for r in rows[2:]]
        lease.record["train"].update(dict(zip(head, last, strict=True)))
        if rates:
            lease.record["train"]["images_per_s_median"] = sorted(rates)[len(rates) // 2]
    ckpt = run / "checkpoints" / "last.pt"
    if not ok or not ckpt.is_file():
        lease.save()
        return 3

    # 5 first (cheap, and the weights are what matter): export
    model = args.out / "default.pt"
    code = (
        "from diffhmc.emulator.checkpoint import export_for_inference as e; "
        f"e({str(ckpt)!r}, {str(model)!r})"
    )
    lease.run("export", [sys.executable, "-c", code], 60)
    subprocess.run(["split", "-b", "15M", str(ckpt), str(args.out / "last.pt.part-")], check=False)

    # 4. validation, DDIM-50 then DDPM-1000, each while the budget allows
    n_val = 2 if args.tiny else args.val_cosmologies
    n_gen = "4" if args.tiny else "15"
    for sampler, need in (("ddim", 0.3), ("ddpm", 0.6)):
        if lease.left() < need * args.val_share * args.budget:
            lease.say(f"validate {sampler}: skipped, {lease.left():.0f} s left")
            continue
        vdir = args.out / f"validate_{sampler}"
        extra = ["--steps", "10" if args.tiny else "50"] if sampler == "ddim" else []
        lease.run(
            f"validate_{sampler}",
            [*py, "validate-emulator", "--model", str(model), "--dataset", str(data),
             "--n-cosmologies", str(n_val), "--n-generated", n_gen, "--sampler", sampler,
             *extra, "--device", device, "--out", str(vdir)],
            max(5.0, lease.left() - args.posterior_share * args.budget - 5),
        )  # fmt: skip
        metrics = vdir / "metrics.json"
        if metrics.is_file():
            lease.record[f"validate_{sampler}"] = json.loads(metrics.read_text()).get("summary")
    # 6. posterior timings with the new weights (issue 15 item 4), in what is left; the
    # benchmark saves each part as it finishes, so a stop by the budget keeps the rest
    timing = args.out / "posterior_gpu.json"
    bench = [sys.executable, "benchmarks/bench_posterior_gpu.py", "--model", str(model)]
    bench += ["--device", device, "--out", str(timing), *(["--tiny"] if args.tiny else [])]
    if args.posterior_share > 0 and lease.left() > 20:
        lease.run("posterior_timing", bench, lease.left() - 5)
    if timing.is_file():
        lease.record["posterior_timing"] = json.loads(timing.read_text())
    lease.say(f"done, {lease.left():.0f} s of the budget left")
    lease.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
