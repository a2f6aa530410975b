"""Which CNN training length the validation loss calls converged (issue 17, "a fair CNN").

Reads the ``history.json`` of baseline CNN runs (``diffhmc baseline train cnn``, same
architecture and seed, different epoch budgets and early-stopping patience), and writes
``evaluations/results/baselines/cnn_selection.{json,png}``: per run the best validation
loss and its epoch, the last epoch, why it stopped, and the validation curves. The run
with the lowest best validation loss is the one shipped; no test map takes part.

    python evaluations/cnn_selection.py runs/cnn-fair runs/cnn-e30 runs/cnn-e60 \\
        --shipped-history evaluations/results/baselines/cnn_v1_train_history.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from diffhmc.core.fileio import load_json, save_figure, save_json
from diffhmc.core.machine import machine_info

OUT = Path(__file__).parent / "results" / "baselines"


def summarise(name: str, doc: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    history = doc["history"]
    best = min(history, key=lambda h: h["val_loss"])
    return {
        "run": name,
        "epochs_budget": config.get("epochs"),
        "patience": config.get("patience"),
        "epochs_run": len(history),
        "best_val_loss": best["val_loss"],
        "best_epoch": best["epoch"],
        "last_val_loss": history[-1]["val_loss"],
        "stop_reason": doc.get("stop_reason"),
        "seconds": history[-1].get("time_s"),
        "history": history,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="baseline run folders")
    ap.add_argument("--shipped-history", type=Path, default=None, help="the old CNN's history")
    args = ap.parse_args()
    rows = []
    if args.shipped_history is not None:
        old = load_json(args.shipped_history)
        rows.append(summarise("previous shipped CNN", old, {"epochs": 12, "patience": 8}))
    for run in args.runs:
        cfg = load_json(run / "config.json").get("config", {})
        rows.append(summarise(run.name, load_json(run / "history.json"), cfg))
    chosen = min(rows, key=lambda r: r["best_val_loss"])
    save_json(
        OUT / "cnn_selection.json",
        {
            "rule": "lowest best validation loss (moment loss, 150 validation simulations)",
            "chosen": chosen["run"],
            "runs": rows,
            "command": "python evaluations/cnn_selection.py " + " ".join(map(str, args.runs)),
            "machine": machine_info(),
        },
    )
    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for r in rows:
        h = r["history"]
        ax.plot([e["epoch"] for e in h], [e["val_loss"] for e in h], marker=".", label=r["run"])
    ax.set(xlabel="epoch", ylabel="validation moment loss", title="CNN: validation loss")
    ax.legend(fontsize=8)
    save_figure(OUT / "cnn_selection.png", fig)
    for r in rows:
        print(
            f"{r['run']:24s} best val {r['best_val_loss']:+.3f} at epoch {r['best_epoch']} "
            f"of {r['epochs_run']} (budget {r['epochs_budget']}, patience {r['patience']})"
        )
    print(f"chosen: {chosen['run']}")


if __name__ == "__main__":
    main()
