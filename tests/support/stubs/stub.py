#!/usr/bin/python3 -S
"""The one entry of every trace stub: the command's name (argv[0]) picks the handler (dispatch.py).

Each call is recorded in /bakegen-trace/trace.jsonl before it runs ({"pid", "tool", "argv", "kind", "t"}) and its
exit code after ({"pid", "rc", "t"}). A handler that raises anything but Fail is a bug in the stub: it exits 99 and
the harness fails the test on it. Kept tiny: the modules it imports are byte-compiled once per machine.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))

import dispatch

sys.exit(dispatch.main())
