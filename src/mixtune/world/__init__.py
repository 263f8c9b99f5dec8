"""world step of the mixtune pipeline: the seeded mini-lab world (people, math, code, instructions, knowledge QA).

`generate_world(cfg, out_dir)` writes the corpus, SFT sources and held-out benchmarks (docs/CONTRACTS.md).
"""

from mixtune.world.build import generate_world

__all__ = ["generate_world"]
