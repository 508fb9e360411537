"""The CPU accounting of ``vidmem bench api`` (the benchmark itself is not a test)."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.api import descendants, machine_cpu_s, outside_cpu_s, process_cpu_s, process_tree_cpu_s

SPIN = "import time\nend = time.time() + 0.6\nwhile time.time() < end: pass\ntime.sleep(30)"
WAIT_FOR_SPINNER = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {SPIN!r}])"
CPU_SPIN = "import time\nwhile time.process_time() < 0.6: pass\ntime.sleep(30)"
WAIT_FOR_CPU_SPINNER = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {CPU_SPIN!r}])"


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


def test_outside_cpu_counts_processes_outside_the_benchmarks_trees_only():
    # two processes whose children each spin 0.6 s of CPU: one is the deployment's, the other another service's
    ours, theirs = (subprocess.Popen([sys.executable, "-c", WAIT_FOR_CPU_SPINNER]) for _ in range(2))
    try:
        while any(len(descendants(p.pid)) < 2 for p in (ours, theirs)):  # snapshots see processes alive at both
            time.sleep(0.01)
        before = process_cpu_s()
        deadline, spun = time.monotonic() + 20.0, []  # each spins 0.6 s of CPU, however busy the machine is
        while time.monotonic() < deadline:  # until both have spun and sleep
            spun.append([process_tree_cpu_s(p.pid) for p in (ours, theirs)])
            if len(spun) > 1 and spun[-1] == spun[-2] and min(spun[-1]) >= 0.6:
                break
            time.sleep(0.3)
        after = process_cpu_s()
        # the machine runs other things meanwhile (this test's own process among them): compare what is counted
        # with and without each tree among the benchmark's
        everything = outside_cpu_s(before, after, [])
        without_ours = outside_cpu_s(before, after, [ours.pid])
        without_both = outside_cpu_s(before, after, [ours.pid, theirs.pid])
    finally:
        for proc in (ours, theirs):
            subprocess.run(["pkill", "-P", str(proc.pid)], check=False)
            proc.kill()
            proc.wait()

    for name, share in (("ours", everything - without_ours), ("theirs", without_ours - without_both)):
        assert 0.5 <= share <= 0.8, f"{name} spun 0.6 s of CPU in a grandchild; its tree counted {share:.2f} s"
