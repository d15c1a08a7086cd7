"""Render one image's captions, nouns, boxes and masks as an overlay PNG.

    python -m stages.overlay --image-id 17                # -> overlays/17.png
    python -m stages.overlay --caption-id 90210 --out x.png
    python -m stages.overlay --list                       # the image ids you can render

Reads the current outputs of the captions, ground and segment stages (paths from params).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.cli import parse
from pipeline.core.config import read_params
from pipeline.core.tables import read_table, write_bytes
from pipeline.data.overlays import OverlaySource, to_png


def main(argv: list[str] | None = None) -> Path | None:
    def extend(p):
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--image-id", type=int)
        g.add_argument("--caption-id", type=int)
        g.add_argument("--list", action="store_true", help="print the image ids that have boxes")
        p.add_argument("--out", default=None, help="output PNG (default: overlays/<image_id>.png)")

    args, log = parse(__doc__, argv, extend)
    params = read_params(args.params)
    captions = Path(params["captions"]["out_dir"]) / "captions.parquet"
    boxes = Path(params["ground"]["out_dir"]) / "boxes"
    masks = Path(params["segment"]["out_dir"]) / "masks"
    source = OverlaySource(captions, boxes, masks)
    if args.list:
        print(" ".join(map(str, sorted(source.boxes))))
        return None
    image_id = args.image_id
    if args.caption_id is not None:
        rows = read_table(captions, columns=["caption_id", "image_id"]).to_pylist()
        match = [r["image_id"] for r in rows if r["caption_id"] == args.caption_id]
        if not match:
            raise SystemExit(f"caption id {args.caption_id} is not in {captions}")
        image_id = match[0]
    if image_id not in source.paths:
        raise SystemExit(f"image id {image_id} is not in {captions}")
    out = Path(args.out or f"overlays/{image_id}.png")
    write_bytes(to_png(source.render(image_id)), out)
    log.info("wrote %s", out)
    return out


if __name__ == "__main__":
    main()
