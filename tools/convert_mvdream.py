"""Convert MVDream's original checkpoint (``sd-v2.1-base-4view.pt``, LDM key names) to a diffusers folder once, so
runs load it directly (``teacher.model=FOLDER``) instead of converting it at every start.

    python tools/convert_mvdream.py sd-v2.1-base-4view.pt mvdream-sd21 [--base-model DIR] [--original-config YAML]
                                    [--dtype float32|float16]

The UNet (with MVDream's camera MLP as its "projection" class embedding) and the VAE come from the checkpoint,
converted with diffusers' own LDM converters; the tokenizer and text encoder from ``--base-model`` (SD 2.1-base,
a hub repo id or a local diffusers folder). See dreamengine/teachers/mvdream_weights.py.
"""

from __future__ import annotations

import argparse

from dreamengine.teachers.mvdream_weights import convert_to_diffusers_folder
from dreamengine.teachers.stable_diffusion import DTYPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="MVDream's original checkpoint file")
    parser.add_argument("folder", help="where to write the diffusers folder")
    parser.add_argument("--base-model", default="stabilityai/stable-diffusion-2-1-base",
                        help="tokenizer and text encoder (SD 2.1-base repo id or diffusers folder)")
    parser.add_argument("--original-config", default=None, help="the model YAML (default: MVDream's sd-v2-base)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = parser.parse_args()
    folder = convert_to_diffusers_folder(args.checkpoint, args.folder, args.base_model, args.original_config,
                                         DTYPES[args.dtype])
    print(f"wrote {folder}; use it with teacher.model={folder}")


if __name__ == "__main__":
    main()
