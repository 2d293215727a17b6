#!/usr/bin/env python
"""Real-data smoke check of the depth probe: the scikit-image stereo scene (a real photo with dense disparity).

    python tools/lineval/realdata.py stereo [--models dinov2_small_imgfocus random:dinov2_small_imgfocus]

``skimage.data.stereo_motorcycle()`` gives the left image (500 x 741) and its disparity map (inf = invalid). The
left 60 % of the image is cut into overlapping training tiles (``--tile`` 112 px, stride 28), the right 38 % (after
a 14-px gap) into test tiles (stride 56), so no held-out pixel is ever seen in training. The cached depth probe
(256 bins over the training disparity range, BN + 1x1 conv on patch (+) CLS) is trained with an LR grid and the
usual validation selection (validation tiles are carved from the training tiles, so they overlap them: their RMSE
measures how well the probe *fits* the scene). Both RMSEs (disparity pixels) are compared with the constant
prediction "mean training disparity". One scene: a smoke test of the pipeline on real pixels, not a benchmark.

The other real-data checks are plain lineval commands (docs/lineval.md): Fashion-MNIST with transfer.py and the
cached-vs-online benchmark with imagenet.py --dataset toy_scenes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

def _boxes(x0: int, x1: int, height: int, tile: int, stride: int) -> list[tuple[int, int]]:
    return [(y, x) for y in range(0, height - tile + 1, stride) for x in range(x0, x1 - tile + 1, stride)]


def stereo(args: argparse.Namespace) -> int:
    """Depth probe vs constant baseline on the stereo-motorcycle disparity."""
    import numpy as np
    import torch
    from skimage.data import stereo_motorcycle
    from torch.utils.data import Dataset

    from mdistiller.eval.features import FeatureSpec, load_backbone
    from mdistiller.eval.metrics import DepthMetrics
    from mdistiller.eval.protocols import DepthTask
    from mdistiller.eval.runner import ProbeData, ProbeSettings, carve_validation, run_probe

    left, _, disp = stereo_motorcycle()
    image = torch.from_numpy(left).permute(2, 0, 1).float() / 255.0
    gt = torch.from_numpy(np.where(np.isfinite(disp), disp, 0.0).astype(np.float32))
    h, w = gt.shape
    split = int(0.6 * w)
    tile = args.tile
    train_boxes = _boxes(0, split, h, tile, 28)
    test_boxes = _boxes(split + 14, w, h, tile, 56)

    class Tiles(Dataset):
        def __init__(self, boxes: list[tuple[int, int]]) -> None:
            self.boxes = boxes

        def __len__(self) -> int:
            return len(self.boxes)

        def __getitem__(self, i: int):
            y, x = self.boxes[i]
            return image[:, y : y + tile, x : x + tile].contiguous(), {"depth": gt[y : y + tile, x : x + tile].clone()}

    train_region = gt[:, :split]
    train_valid = train_region[train_region > 0]  # every valid training pixel once (tiles overlap)
    lo, hi = float(train_valid.min()), float(train_valid.max())
    test_ds = Tiles(test_boxes)
    data = ProbeData("stereo_motorcycle", train=Tiles(train_boxes), test=test_ds, augment="none",
                     info={"name": "stereo_motorcycle", "source": "skimage.data.stereo_motorcycle (left + disparity)",
                           "tile": tile, "train_region": f"x < {split}", "test_region": f"x >= {split + 14}",
                           "num_train_tiles": len(train_boxes), "num_test_tiles": len(test_boxes)})
    settings = ProbeSettings(epochs=args.epochs, batch_size=16, eval_batch_size=16, seed=args.seed, lrs=tuple(args.lrs),
                             cache_dir=str(Path(args.out).with_suffix("") / "cache"), verbose=args.verbose)
    # constant baseline: the mean training disparity everywhere, scored exactly like the probe
    task = DepthTask((lo, hi), mode=args.depth_mode, loss_size=args.loss_size)
    base = DepthMetrics(task.min_depth, task.max_depth)
    for i in range(len(test_ds)):
        t = test_ds[i][1]["depth"][None]
        base.update(torch.full_like(t, float(train_valid.mean())), t)
    baseline = base.compute()
    # the same constant on the validation tiles (carved from the training region exactly as run_probe does)
    _, val_rows = carve_validation(len(train_boxes), settings.val_fraction, settings.seed)
    base_val = DepthMetrics(task.min_depth, task.max_depth)
    for i in val_rows:
        t = data.train[int(i)][1]["depth"][None]
        base_val.update(torch.full_like(t, float(train_valid.mean())), t)
    baseline_val = base_val.compute()
    report = {"baseline_constant_mean": {"value": float(train_valid.mean()), **baseline},
              "baseline_constant_mean_val": baseline_val, "probes": {}}
    lines = [f"stereo_motorcycle: {len(train_boxes)} train / {len(test_boxes)} test tiles of {tile} px, disparity "
             f"{lo:.1f}-{hi:.1f} px; constant (train mean {float(train_valid.mean()):.2f}) RMSE: held-out region "
             f"{baseline['rmse']:.3f}, validation tiles {baseline_val['rmse']:.3f}"]
    for name in args.models:
        backbone = load_backbone(name, seed=args.seed)
        task = DepthTask((lo, hi), mode=args.depth_mode, loss_size=args.loss_size)
        res = run_probe(backbone, FeatureSpec(tokens="patch"), task, data, settings)
        report["probes"][name] = res
        m = res["metrics"]
        v = res["val_metrics"][res["chosen_head"]]["rmse"]
        lines.append(f"  {name}: probe RMSE held-out {m['rmse']:.3f} ({m['rmse'] / baseline['rmse']:.2f} x constant), "
                     f"validation {v:.3f} ({v / baseline_val['rmse']:.2f} x constant); held-out AbsRel "
                     f"{m['abs_rel']:.3f}, d1 {100 * m['d1']:.1f} % | lr {res['chosen_lr']:g} | "
                     f"{res['time']['total_s']:.1f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print("\n".join(lines) + f"\n-> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/lineval/realdata.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="check", required=True)
    s = sub.add_parser("stereo", help="depth probe on the stereo-motorcycle disparity vs a constant prediction")
    s.add_argument("--models", nargs="+", default=["dinov2_small_imgfocus", "random:dinov2_small_imgfocus"])
    s.add_argument("--epochs", type=int, default=20)
    s.add_argument("--loss-size", type=int, default=28, help="training-loss resolution (nearest-resized targets)")
    s.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2], help="AdamW learning-rate grid")
    s.add_argument("--tile", type=int, default=112, help="tile size in pixels (a multiple of 14)")
    s.add_argument("--depth-mode", choices=("bins", "regression"), default="bins")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="output/lineval/realdata/stereo.json")
    s.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    return stereo(args)


if __name__ == "__main__":
    from mdistiller.cli import exit_on_interrupt

    with exit_on_interrupt():  # Ctrl-C while torch imports: one line, exit 130
        sys.exit(main())
