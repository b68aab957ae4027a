#!/usr/bin/env python
"""Convert a public SOLO / SOLOv2 / BiSeNet / ResNet checkpoint into a solo_d2 (Detectron2) one.

    python tools/convert_checkpoint.py --from adelaidet-solov2 model_final.pth solov2_r50.pth
    python tools/convert_checkpoint.py --from torchvision-resnet resnet18.pth R-18-tv.pkl

The converted weights are verified against the model of the config they belong to (zero
missing, zero unexpected keys, equal shapes) before anything is written. The last line of
the output is that config's path relative to the repository root, so scripts can read it:

    cfg=$(python tools/convert_checkpoint.py --from mmdet in.pth out.pth | tail -n 1)

A checkpoint the converter cannot place (it says so) is converted to a config you name:

    python tools/convert_checkpoint.py --from solo-official \\
        --config-file configs/Converted/SOLO-official/SOLOv2_R50.yaml \\
        in.pth out.pth MODEL.SOLO.INS_CHANNELS 256
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from solo_d2.checkpoint import CONVERTERS, ConversionError, convert_checkpoint  # noqa: E402


def main(argv=None) -> int:
    sources = "\n".join(
        f"  {c.name}: {c.description}" for c in sorted(CONVERTERS.values(), key=lambda c: c.name)
    )
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="sources:\n" + sources,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from", dest="source", required=True, choices=sorted(CONVERTERS), help="source layout"
    )
    parser.add_argument("input", help="checkpoint of the source implementation")
    parser.add_argument(
        "output", help="converted checkpoint to write (.pth; .pkl for torchvision-resnet)"
    )
    parser.add_argument(
        "--config-file",
        default=None,
        help="(before the two paths) the solo_d2 config to convert to, instead of the one the "
        "converter names; for solo-official / mmdet the checkpoint is checked against it "
        "(with the overrides given after the paths) and every value that differs is listed. "
        "Needed for a checkpoint whose variant the converter cannot tell (e.g. a SOLOv2 "
        "without meta config text whose towers match no official model)",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        help="config overrides used for the verification (KEY VALUE ...)",
    )
    args = parser.parse_args(argv)
    try:
        result = convert_checkpoint(
            args.source, args.input, args.output, config=args.config_file, opts=args.opts
        )
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"nothing was written to {args.output}", file=sys.stderr)
        return 1
    print(
        f"converted {args.input} ({args.source}) -> {args.output}: {len(result.state_dict)} tensors"
    )
    for note in result.notes:
        print(f"note: {note}")
    if result.opts:
        print(f"config overrides: {' '.join(result.opts)}")
    print(result.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
