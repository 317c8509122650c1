"""``geosearch models list|eval``: the registered embedding models and their retrieval metrics."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("models", help="list embedding models or evaluate one")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    pl = msub.add_parser("list", help="registered models, the default, and whether weights are present")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=run_list)
    pe = msub.add_parser("eval", help="zero-shot / class P@10 / caption retrieval on a manifest split")
    pe.add_argument("--model", default=None, help="registry name or ARCH:CHECKPOINT (default: settings)")
    pe.add_argument("--data", default="../shared/data/aid-rsicd/manifest.jsonl")
    pe.add_argument("--split", default="dev")
    pe.add_argument("--device", default=None)
    pe.add_argument("--json", action="store_true")
    pe.set_defaults(func=run_eval)
    pg = msub.add_parser("gallery", help="embed a reference gallery of real scenes for calibrated abstention")
    pg.add_argument(
        "source",
        nargs="?",
        default="../shared/data/aid-rsicd/manifest.jsonl",
        help="a captioned manifest (its train split is used) or a folder of class sub-folders",
    )
    pg.add_argument("--model", default=None, help="registry name or ARCH:CHECKPOINT (default: settings)")
    pg.add_argument("--split", default="train", help="manifest split (only 'train' is accepted)")
    pg.add_argument("--out", default=None, help="output .npz (default: MODELS_DIR/<model>.gallery.npz)")
    pg.add_argument("--device", default=None)
    pg.set_defaults(func=run_gallery)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_list(args) -> int:
    from geosearch.models import default_model_name, model_specs, weights_present
    from geosearch_server.commands._common import format_table

    default = default_model_name()
    rows = [
        {
            "name": s.name,
            "default": "*" if s.name == default else "",
            "arch": s.arch,
            "weights": "present" if weights_present(s.name) else "missing",
            "description": s.description,
        }
        for s in model_specs()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, ["name", "default", "arch", "weights", "description"]))
    return 0


def run_eval(args) -> int:
    from geosearch.models import get_model
    from geosearch.train.data import decode_images, load_source
    from geosearch.train.evaluate import evaluate_model, format_metrics

    model = get_model(args.model, device=args.device)
    data = load_source(args.data, args.split)
    images = decode_images(data.records, max(model.image_size, 150))
    metrics = evaluate_model(model, data, images)
    if args.json:
        print(json.dumps({"model": model.model_id, "split": args.split, **metrics}, indent=2))
    else:
        print(f"{model.model_id} on {args.split}: {format_metrics(metrics)}")
    return 0


def run_gallery(args) -> int:
    from geosearch.models import get_model
    from geosearch.refine.gallery import build_gallery, check_gallery_source

    check_gallery_source(args.source, args.split)
    model = get_model(args.model, device=args.device)
    out, n = build_gallery(model, args.source, args.split, out=args.out, progress=True)
    print(f"gallery of {n} images for {model.model_id}: {out}")
    return 0
