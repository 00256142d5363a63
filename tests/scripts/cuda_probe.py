"""Works on the GPU its agent gave it and writes what CUDA showed it to ``cuda.json`` in the trial folder.

``--hold_mib M --hold_s S`` keeps M MiB of GPU memory for S seconds after the work; with
``--child 1`` a helper in a session of its own (as torchrun starts its workers) holds as much too.
``holding`` in the trial folder says the memory is taken.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HOLD = (
    "import sys, time, torch\n"
    "x = torch.empty(int(sys.argv[1]) << 20, dtype=torch.uint8, device='cuda'); torch.cuda.synchronize()\n"
    "open(sys.argv[2], 'w').close(); time.sleep(float(sys.argv[3]))\n"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--i", type=int, default=0)
    parser.add_argument("--work_s", type=float, default=1.0)
    parser.add_argument("--hold_mib", type=int, default=0)
    parser.add_argument("--hold_s", type=float, default=0.0)
    parser.add_argument("--child", type=int, default=0)
    args, _ = parser.parse_known_args()
    folder = Path(os.environ["SWEEPER_TRIAL_DIR"])
    started = time.time()
    props = torch.cuda.get_device_properties(0)
    a = torch.randn(2048, 2048, device="cuda")
    deadline = time.monotonic() + args.work_s
    while time.monotonic() < deadline:  # busy on the GPU for the whole interval
        a = torch.tanh(a @ a)
        torch.cuda.synchronize()
    seen = {
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "order": os.environ.get("CUDA_DEVICE_ORDER"),
        "count": torch.cuda.device_count(),
        "uuid": str(props.uuid),
        "name": props.name,
        "finite": bool(torch.isfinite(a).all()),
        "start": started,
        "end": time.time(),
    }
    (folder / "cuda.json").write_text(json.dumps(seen))
    if args.hold_mib:
        if args.child:
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    HOLD,
                    str(args.hold_mib),
                    str(folder / "child_holding"),
                    str(args.hold_s),
                ],
                start_new_session=True,
            )
        held = torch.empty(args.hold_mib << 20, dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
        (folder / "holding").write_text(str(held.numel()))
        time.sleep(args.hold_s)


if __name__ == "__main__":
    main()
