"""`python -m mixtune <verb> ...`: what torchrun and accelerate launch start (`-m mixtune train -c R`)."""

import sys

from mixtune.cli import main

sys.exit(main())
