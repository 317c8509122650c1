"""``geosearch train SOURCE``: train the starter text-image model (LiT, locked MiniLM text tower)."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("train", help="train a small image tower against the locked MiniLM text tower")
    p.add_argument(
        "source", help="manifest.jsonl (path, class, split, captions) or a folder of class folders"
    )
    p.add_argument("--split", default="train", help="training split (manifest) or sub-folder")
    p.add_argument("--val-split", default="dev", help="split used to pick the best epoch ('' for none)")
    p.add_argument("--epochs", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument(
        "--template-prob",
        type=float,
        default=0.3,
        help="chance an image is paired with a class-name prompt instead of a caption",
    )
    p.add_argument(
        "--class-loss-weight",
        type=float,
        default=1.0,
        help="weight of the image-vs-all-class-prompts term added to ClipLoss (0: ClipLoss only)",
    )
    p.add_argument(
        "--rank-loss-weight",
        type=float,
        default=1.0,
        help="weight of the term ranking each class prompt over all images of the batch (0: v2's recipe)",
    )
    p.add_argument(
        "--tile-frac",
        type=float,
        default=0.5,
        help="share of each batch that is tile-like crops of 3x3 chip mosaics (0: whole chips only)",
    )
    p.add_argument(
        "--tile-side",
        type=float,
        nargs=2,
        default=(0.25, 2.5),
        metavar=("MIN", "MAX"),
        help="side of a tile-like crop, in chip sides (log-uniform)",
    )
    p.add_argument("--val-tiles", type=int, default=2000, help="seeded tile-like crops of the val split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run folder: cache, last.pt, best.safetensors, metrics.jsonl")
    p.add_argument(
        "--resume",
        dest="resume",
        action="store_true",
        default=True,
        help="continue from OUT/last.pt when present (the default)",
    )
    p.add_argument("--fresh", dest="resume", action="store_false", help="ignore OUT/last.pt")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: settings)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: settings)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)


def run(args) -> int:
    from geosearch.settings import get_settings
    from geosearch.train.loop import TrainConfig, train

    settings = get_settings()
    cfg = TrainConfig(
        source=args.source,
        out=args.out,
        split=args.split or None,
        val_split=args.val_split or None,
        epochs=args.epochs,
        batch_size=args.batch_size,
        image_size=args.image_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        template_prob=args.template_prob,
        class_loss_weight=args.class_loss_weight,
        rank_loss_weight=args.rank_loss_weight,
        tile_frac=args.tile_frac,
        tile_side=tuple(args.tile_side),
        val_tiles=args.val_tiles,
        seed=args.seed,
        threads=args.threads if args.threads is not None else (settings.threads or 2),
        device=args.device or settings.device,
        resume=args.resume,
        progress=args.progress,
    )
    result = train(cfg)
    print(json.dumps({"best": str(result.best_path), "metrics": result.best_metrics}, indent=2))
    return 0
