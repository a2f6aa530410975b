"""Is the CNN's training loss far below its validation loss because it overfits? (issue 17)

The moment loss (:func:`diffhmc.baselines.cnn.moment_loss`) sums squared residuals over the
batch inside its logs, so it grows by ``2 P log N`` with the batch size ``N`` (``P = 2``
parameters, two terms each): the logged training loss is a mean over batches of 64 maps
(with dropout and augmentation), the validation loss one batch of the whole split. This
evaluates a shipped CNN in eval mode on the same number of evenly spaced maps of each split,
both ways, so the two are compared at equal ``N``:

    python evaluations/cnn_train_val_gap.py --model cnn
    -> evaluations/results/baselines/cnn_train_val_gap_<model>.json
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from diffhmc.baselines import cnn
from diffhmc.baselines.api import open_baseline
from diffhmc.core.fileio import save_json
from diffhmc.core.machine import machine_info, reexec_with_tunables
from diffhmc.data.dataset import load_dataset
from diffhmc.data.inputs import map_tensor, param_tensor

OUT = Path(__file__).parent / "results" / "baselines"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cnn", help="baseline checkpoint or shipped name")
    ap.add_argument("--dataset", type=Path, default=Path("data/pm64"))
    ap.add_argument("--n", type=int, default=2250, help="maps per split (the val split's size)")
    ap.add_argument("--batch", type=int, default=64, help="the training batch size")
    args = ap.parse_args()
    torch.set_num_threads(1)
    b = open_baseline(args.model)
    if b.kind != "cnn":
        raise SystemExit(f"error: {b.source} is a {b.kind}, not a CNN")
    ds = load_dataset(args.dataset)
    sizes = {s: len(ds.split_indices(s)) for s in ("train", "val")}
    if not args.batch <= args.n <= min(sizes.values()):
        raise SystemExit(f"error: --n must be in [--batch, {min(sizes.values())}], got {args.n}")
    res: dict[str, dict[str, float]] = {}
    for split in ("train", "val"):
        maps, params, _ = ds.split(split)
        idx = np.linspace(0, len(maps) - 1, args.n).astype(int)
        x = map_tensor(np.asarray(maps)[idx], b.normalization)  # the model's own units
        u = param_tensor(np.asarray(params)[idx], b.space)
        mu, sigma = cnn.predict(b.net, x)  # type: ignore[arg-type]
        per_batch = [
            float(
                cnn.moment_loss(
                    mu[i : i + args.batch], sigma[i : i + args.batch], u[i : i + args.batch]
                )
            )
            for i in range(0, args.n - args.batch + 1, args.batch)
        ]
        res[split] = {
            "one_batch_of_n": float(cnn.moment_loss(mu, sigma, u)),
            "mean_over_batches": float(np.mean(per_batch)),
            "rmse_unit": [float(v) for v in ((mu - u) ** 2).mean(0).sqrt()],
        }
    shift = 2 * u.shape[1] * math.log(args.n / args.batch)
    doc = {
        "model": b.source,
        "n_maps_per_split": args.n,
        "batch": args.batch,
        "splits": res,
        "batch_size_shift_2P_log_N_over_batch": shift,
        "train_minus_val_at_equal_n": res["train"]["one_batch_of_n"] - res["val"]["one_batch_of_n"],
        "command": "python evaluations/cnn_train_val_gap.py --model " + str(args.model),
        "machine": machine_info(),
    }
    name = Path(str(args.model)).stem
    save_json(OUT / f"cnn_train_val_gap_{name}.json", doc)
    for s, r in res.items():
        print(
            f"{s}: one batch of {args.n} {r['one_batch_of_n']:.3f}; batches of {args.batch} "
            f"{r['mean_over_batches']:.3f}; RMSE (prior units) {r['rmse_unit']}"
        )
    print(f"2 P log(N / batch) = {shift:.2f}")


if __name__ == "__main__":
    reexec_with_tunables()  # the network runs in this process
    main()
