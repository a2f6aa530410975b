"""``diffhmc demo``: simulate a map at a seeded cosmology and infer its parameters with the
shipped model (or, ``--simulator-only``, compare simulated cosmologies)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diffhmc.cli.common import (
    add_inference_args,
    add_input_check_args,
    add_model_arg,
    add_ppc_args,
    add_recalibration_arg,
    add_sim_config_args,
    inference_config,
    ppc_config,
    run_dir,
    sim_config,
    subparser,
)


def register(sub: Any) -> None:
    p = subparser(
        sub,
        "demo",
        "Main job: simulate a new map at a seeded cosmology, infer (Omega_m, sigma_8) from it "
        "with the shipped model (Diffusion-HMC), and save the posterior, its plots and maps "
        "emulated at the posterior mean. --simulator-only: compare simulated cosmologies.",
        "diffhmc demo --out runs/demo",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (new or empty)")
    p.add_argument("--seed", type=int, default=2024, help="seed of the cosmology and simulation")
    p.add_argument(
        "--simulator-only",
        action="store_true",
        help="only simulate three cosmologies and compare their statistics",
    )
    add_model_arg(p)
    add_inference_args(p)
    add_recalibration_arg(p)
    add_input_check_args(p)
    add_ppc_args(p)
    add_sim_config_args(p)


def run(args: argparse.Namespace) -> int:
    cfg = sim_config(args)
    if args.simulator_only:
        from diffhmc.workflows.demo import simulator_demo

        simulator_demo(run_dir(args.out, "demo"), seed=args.seed, config=cfg)
        return 0
    from diffhmc.workflows.demo import inference_demo
    from diffhmc.workflows.infer import recalibration_for

    icfg = inference_config(args)
    ppc = ppc_config(args)
    recal = None
    if args.recalibration is not None:
        from diffhmc.emulator.checkpoint import load_model

        recal = recalibration_for(
            args.recalibration, load_model(args.model), icfg, args.model is not None
        )
    inference_demo(
        run_dir(args.out, "demo"),
        seed=args.seed,
        cfg=icfg,
        model_path=args.model,
        sim_config=cfg,
        recal=recal,
        reference=args.reference,
        allow_out_of_range=args.allow_out_of_range,
        ppc=ppc,
        device=args.device,
    )
    return 0
