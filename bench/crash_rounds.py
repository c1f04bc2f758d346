"""Many kill -9 rounds against a real ``twistd -n numd`` with a store; reports what survived.

Usage: ``python bench/crash_rounds.py [--rounds 100] [--seed N] [--sync everysec|always|both]``

Each round is tests/test_crash.py's: start numd on the same database, check that
every acknowledged value (and clear) of the earlier rounds is there exactly once
and nothing unknown is, add unique values over the counter protocol with several
arrays in flight (sometimes clearing over HTTP), and SIGKILL the daemon at a
random moment. Stops at the first violation and exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# The daemons import numd from this checkout too.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

from tests.test_crash import Model, crash_round, final_check  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=None, help="replay a run's random choices")
    parser.add_argument("--sync", choices=("everysec", "always", "both"), default="both")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    model = Model()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="numd-crash-") as tmp:
        directory = Path(tmp)
        try:
            for number in range(args.rounds):
                sync = args.sync if args.sync != "both" else ("everysec", "always")[number % 2]
                crash_round(directory, model, rng, sync=sync)
                if (number + 1) % 10 == 0:
                    print(f"{number + 1} rounds, {model.acked_total} adds acknowledged", flush=True)
            final_check(directory, model)
        except AssertionError as e:
            print(f"FAILED in round {model.rounds + 1} (seed {seed}): {e}")
            return 1
    print(
        f"{model.rounds} kill -9 rounds in {time.monotonic() - started:.0f} s (seed {seed}): "
        f"{model.acked_total} adds and {model.clears} clears acknowledged, "
        f"none lost, none stored twice, nothing unknown stored"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
