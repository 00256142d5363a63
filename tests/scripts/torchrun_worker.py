"""A torchrun worker that fails as asked (``--mode=...``), for the failure reasons of torchrun trials.

Every worker first takes a DDP step that makes torch print a warning of its own with the worker's
rank (``[rank1]:[W...] Warning: find_unused_parameters=True ...``). Then rank 1 fails and the
others wait, so the report's first failure is always rank 1's. ``import`` fails in every worker
before the process group exists, where torch adds no rank to the traceback.
"""

import os
import sys
import time

mode = next(arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("--mode="))
if mode == "import":
    import no_such_module_for_this_trial  # noqa: F401

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

dist.init_process_group("gloo")
model = DistributedDataParallel(torch.nn.Linear(2, 2), find_unused_parameters=True)
model(torch.ones(1, 2)).sum().backward()
print("a warning of the script's own", file=sys.stderr, flush=True)
if dist.get_rank() != 1:
    time.sleep(60)  # torchrun ends it when rank 1 has failed
elif mode == "raise":
    # A traceback longer than a trial's stored tail: two functions in turn, which Python does not
    # fold into "[Previous line repeated ...]" as it folds one calling itself.
    def deep(n: int) -> None:
        if n:
            deeper(n - 1)
        raise ValueError("worker one cannot go on")

    def deeper(n: int) -> None:
        deep(n)

    deep(15)
elif mode == "abort":
    os.abort()  # as a native library's uncaught exception does
elif mode == "exit":
    sys.exit(3)
