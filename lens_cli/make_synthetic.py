"""Synthetic referring scenes in the REFER layout (`lens make-synthetic`)."""

from __future__ import annotations

from pathlib import Path

from lens_model.vocab import SYNTHETIC_BACKGROUNDS, SYNTHETIC_TASKS


def add_parser(sub) -> None:
    p = sub.add_parser(
        "make-synthetic",
        help="render synthetic referring scenes in the REFER layout",
        description="Images of coloured shapes with referring expressions that need attributes and "
        "spatial relations, written like RefCOCO (refs(unc).p, instances.json, images/). "
        "Evaluate with: lens eval --dataset synthetic --data-root DIR --split val",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--n", type=int, default=200, help="number of images (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--image-size", type=int, default=128, help="square image side in pixels (default: 128)")
    p.add_argument("--min-objects", type=int, default=2, help="fewest shapes per scene (default: 2)")
    p.add_argument("--max-objects", type=int, default=4, help="most shapes per scene, at most 8 (default: 4)")
    p.add_argument(
        "--object-scale",
        type=float,
        default=1.0,
        help="multiply the shapes' sizes (small: 0.08-0.11, large: 0.15-0.2 of the side as half-extent; default: 1)",
    )
    p.add_argument(
        "--relation-rate",
        type=float,
        default=0.5,
        help="share of objects described by a spatial relation where one exists; 0: by attributes wherever they "
        "single the object out (default: 0.5)",
    )
    p.add_argument(
        "--background",
        choices=SYNTHETIC_BACKGROUNDS,
        default="noise",
        help="noise: flat grey with pixel noise; texture: with smooth blotches (default: noise)",
    )
    p.add_argument(
        "--distinct-colors",
        action="store_true",
        help="every object of a scene has its own colour (at most 4 objects) and attribute expressions name it",
    )
    p.add_argument(
        "--task",
        choices=SYNTHETIC_TASKS,
        default="basic",
        help="basic: attribute and relational expressions; reasoning: colours and shapes repeat, relations to an "
        "anchor ('the shape left of the red circle'), each sentence with the target's own name and a rationale "
        "(needs --min-objects 3 or more; default: basic)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from lens_model.data.synthetic import make_synthetic

    path = make_synthetic(
        args.out,
        n_images=args.n,
        seed=args.seed,
        image_size=args.image_size,
        relation_rate=args.relation_rate,
        progress=True,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        object_scale=args.object_scale,
        background=args.background,
        distinct_colors=args.distinct_colors,
        task=args.task,
    )
    print(f"wrote {args.n} synthetic scenes to {path} (REFER layout; lens eval --dataset synthetic --data-root {path})")
    return 0
