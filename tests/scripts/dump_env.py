"""Writes the trial's environment and argv as JSON to the trial folder."""

import json
import os
import sys

with open(os.path.join(os.environ["SWEEPER_TRIAL_DIR"], "seen.json"), "w") as fh:
    json.dump({"env": dict(os.environ), "argv": sys.argv[1:], "cwd": os.getcwd()}, fh)
