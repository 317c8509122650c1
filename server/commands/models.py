"""``geosearch models list|eval|gallery|pointing|tiles``: the registered embedding models and checks of them."""

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
    pp = msub.add_parser(
        "pointing",
        help="one chip per class on a 6x5 grid at 1.7 m: is each class name's top-1 search hit on its chip?",
    )
    pp.add_argument("--model", default=None, help="registry name or ARCH:CHECKPOINT (default: settings)")
    pp.add_argument("--split", default="dev", choices=["dev", "test"], help="test: evaluation only, once")
    pp.add_argument("--gsd", type=float, default=1.7, help="metres per pixel of the grid mosaic")
    pp.add_argument("--seed", type=int, default=0, help="which chip of each class")
    pp.add_argument(
        "--context",
        type=float,
        default=None,
        metavar="W",
        help="rank tiles with their neighbourhood, as geosearch search --context W (default: setting)",
    )
    pp.add_argument("--device", default=None)
    pp.add_argument("--json", action="store_true")
    pp.set_defaults(func=run_pointing)
    pt = msub.add_parser(
        "tiles", help="zero-shot class of every tile one benchmark chip covers (dominant class), per scale"
    )
    pt.add_argument("bench", help="a benchmark folder with labelled regions (geosearch bench aid-mosaic)")
    pt.add_argument("--model", default=None, help="registry name or ARCH:CHECKPOINT (default: settings)")
    pt.add_argument("--index", default=None, help="index of the bench (default: the one geosearch eval uses)")
    pt.add_argument("--scales", type=float, nargs="+", default=[128.0, 256.0], help="tile sides in metres")
    pt.add_argument("--json", action="store_true")
    pt.set_defaults(func=run_tiles)
    for sp in (pe, pg, pp, pt):
        sp.add_argument(
            "--views",
            type=int,
            choices=[1, 2, 4, 8],
            default=None,
            help="dihedral views averaged per image (default: GEOSEARCH_IMAGE_VIEWS, else the model's own)",
        )
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _settings_for(args):
    from geosearch.settings import get_settings

    settings = get_settings()
    upd = {"model": args.model} if args.model else {}
    if getattr(args, "device", None):
        upd["device"] = args.device
    if getattr(args, "views", None):
        upd["image_views"] = args.views
    return settings.model_copy(update=upd) if upd else settings


def run_pointing(args) -> int:
    from geosearch.errors import InputError
    from geosearch.eval.model_checks import pointing

    settings = _settings_for(args)
    if args.context is not None:
        if not args.context >= 0:
            raise InputError(f"--context must be 0 or more, not {args.context}")
        settings = settings.model_copy(update={"search_context": args.context})
    result = pointing(settings.model, split=args.split, gsd_m=args.gsd, seed=args.seed, settings=settings)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        wrong = {c: v["hit_class"] for c, v in result["per_class"].items() if not v["ok"]}
        print(
            f"{result['model']} pointing on {args.split} ({result['grid'][0]}x{result['grid'][1]} at "
            f"{args.gsd:g} m, search context {result['search_context']:g}): {result['pointing']:.3f} of "
            f"{result['classes']} classes"
        )
        for cls, got in wrong.items():
            print(f"  {cls}: top-1 on {got or 'no chip'}")
    return 0


def run_tiles(args) -> int:
    from geosearch.eval.model_checks import tile_classification

    result = tile_classification(
        args.bench,
        args.index,
        scales=tuple(args.scales),
        settings=_settings_for(args),
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        parts = []
        for s in args.scales:
            acc = result[f"acc@{s:g}m"]
            parts.append(f"{s:g} m: {'-' if acc is None else f'{acc:.3f}'} ({result[f'n@{s:g}m']} tiles)")
        print(f"{result['model']} tile classification on {args.bench}: " + "; ".join(parts))
    return 0


def run_list(args) -> int:
    from geosearch.models import default_model_name, model_specs, weights_present
    from geosearch_server.commands._common import format_table

    default = default_model_name()
    rows = [
        {
            "name": s.name,
            "default": "*" if s.name == default else "",
            "arch": s.arch,
            "views": s.views,
            "weights": "present" if weights_present(s.name) else "missing",
            "description": s.description,
        }
        for s in model_specs()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows, ["name", "default", "arch", "views", "weights", "description"]))
    return 0


def run_eval(args) -> int:
    from geosearch.models import get_model
    from geosearch.train.data import decode_images, load_source
    from geosearch.train.evaluate import evaluate_model, format_metrics

    model = get_model(settings=_settings_for(args))
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
    model = get_model(settings=_settings_for(args))
    out, n = build_gallery(model, args.source, args.split, out=args.out, progress=True)
    print(f"gallery of {n} images for {model.model_id}: {out}")
    return 0
