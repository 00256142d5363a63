"""A torchrun worker that fails as asked (``--mode=...``), for the failure reasons of torchrun trials.

Rank 1 fails; rank 0 waits, so the report's first failure is always rank 1's. ``import`` fails in
every worker before the process group exists, where torch adds no rank to the traceback.
"""

import os
import sys
import time

mode = next(arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("--mode="))
if mode == "import":
    import no_such_module_for_this_trial  # noqa: F401

import torch.distributed as dist  # noqa: E402

dist.init_process_group("gloo")
print("a warning of the worker's own", file=sys.stderr, flush=True)
if dist.get_rank() == 0:
    time.sleep(60)  # torchrun ends it when rank 1 has failed
elif mode == "raise":
    raise ValueError("worker one cannot go on")
elif mode == "abort":
    os.abort()  # as a native library's uncaught exception does
elif mode == "exit":
    sys.exit(3)
