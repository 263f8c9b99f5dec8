"""torchrun entry for tests: `mixtune ARGS` whose rank 0 is SIGKILLed right after it writes checkpoint step N.

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_kill.py N train -c recipe.yaml
torchrun then stops the other rank: a killed 2-process run, at a known step.
"""

import os
import signal
import sys

from mixtune.train import engine

KILL_AT = int(sys.argv[1])
_save = engine.save_checkpoint


def save_then_die(run_dir, model, optimizer, scheduler, state, full):
    path = _save(run_dir, model, optimizer, scheduler, state, full)
    if state.step >= KILL_AT and engine.dist_setup().is_main:
        os.kill(os.getpid(), signal.SIGKILL)
    return path


engine.save_checkpoint = save_then_die

from mixtune.cli import main  # after the patch: torchrun runs this file top to bottom

sys.exit(main(sys.argv[2:]))
