"""The CPU accounting of ``vidmem bench api`` (the benchmark itself is not a test)."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.api import machine_cpu_s, process_tree_cpu_s

SPIN = "import time\nend = time.time() + 0.6\nwhile time.time() < end: pass\ntime.sleep(30)"
WAIT_FOR_SPINNER = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {SPIN!r}])"


def test_process_tree_cpu_when_a_grandchild_burns_cpu_counts_it():
    # a parent that only waits, as uvicorn's supervisor does, and a child that spins 0.6 s of CPU
    parent = subprocess.Popen([sys.executable, "-c", WAIT_FOR_SPINNER])
    try:
        machine_before = machine_cpu_s()
        time.sleep(1.5)
        tree, machine = process_tree_cpu_s(parent.pid), machine_cpu_s() - machine_before
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()

    assert 0.5 < tree < 3.0, f"the child spun 0.6 s of CPU; the tree counted {tree:.2f} s"
    assert machine >= 0.5, f"the machine was busy at least while the child spun; counted {machine:.2f} s"


def test_process_tree_cpu_when_the_process_is_gone_is_zero():
    assert process_tree_cpu_s(2**22 + 12345) == 0.0
