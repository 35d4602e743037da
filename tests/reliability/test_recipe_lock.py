"""Two runs of the same recipe at once: the second waits for the first (case 13)."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

HOLDER = textwrap.dedent("""
    import sys, time
    from tasks.core.run import recipe_lock
    with recipe_lock("stats-qa"):
        print("held", flush=True)
        time.sleep(float(sys.argv[1]))
    print("released", flush=True)
""")


def test_second_run_waits_for_the_first(distillery_home):
    repo = Path(__file__).resolve().parents[2]
    first = subprocess.Popen([sys.executable, "-c", HOLDER, "3"], cwd=repo, stdout=subprocess.PIPE, text=True)
    assert first.stdout.readline().strip() == "held"
    from tasks.core.run import recipe_lock

    messages = []
    start = time.monotonic()
    with recipe_lock("stats-qa", log=messages.append):
        waited = time.monotonic() - start
        assert first.stdout.readline().strip() == "released"  # we only got in after the first let go
    first.wait()
    assert waited > 1.0
    assert messages and "another run of stats-qa" in messages[0]
    with recipe_lock("paper-reviewer", log=messages.append):  # other recipes are not blocked
        assert len(messages) == 1
