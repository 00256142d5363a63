"""Starts a grandchild that ignores SIGTERM, writes its pid to argv[1], then waits or exits."""

import os
import subprocess
import sys
import time

pid_file, mode = sys.argv[1], sys.argv[2]
code = (
    "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); os.replace(sys.argv[1] + '.tmp', sys.argv[1]);"
    "time.sleep(1000)"
)
subprocess.Popen([sys.executable, "-c", code, pid_file])
while not os.path.exists(pid_file):
    time.sleep(0.01)
if mode == "exit":
    sys.exit(0)
time.sleep(1000)
