"""The continued-pre-training analysis's plot and page: new- and old-domain loss along each start's continued
pre-training, and the abilities after the same SFT."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from mixtune.analysis.report import markdown_table, write_page
from mixtune.config import Recipe
from mixtune.runs import atomic_write_text

LABELS = {"stable": "(a) stable-phase ckpt, no warm-up", "decayed-rewarm": "(b) decayed ckpt, re-warm-up",
          "decayed": "(c) decayed ckpt, no warm-up", "base": "base, no CPT"}
COLORS = {"stable": "C0", "decayed-rewarm": "C1", "decayed": "C2", "base": "C7"}


def _ordered(runs: dict) -> list[tuple[str, dict]]:
    """Runs in the order (a), (b), (c), base, whatever order the workers finished in."""
    return sorted(runs.items(), key=lambda kv: list(LABELS).index(kv[0]) if kv[0] in LABELS else len(LABELS))
CPT_HEADER = ("start", "from step", "new loss start", "new loss end", "old loss start", "old loss peak",
              "old loss end", "old spike", "facts new", "facts old", "wall s")


def cpt_plot(summary: dict, path: Path) -> Path:
    runs, sft = summary["cpt"], summary["sft"]
    fig = Figure(figsize=(15 if sft else 10, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 3 if sft else 2)
    for start, r in _ordered(runs):
        for ax, key in zip(axes, ("curve_new", "curve_old")):
            ax.plot([s for s, _ in r[key]], [v for _, v in r[key]], marker=".", label=LABELS.get(start, start),
                    color=COLORS.get(start))
    for ax, title in zip(axes, ("new domain (held-out biographies of the new people)",
                                "old domain (rows the base held out)")):
        ax.set_xlabel("continued pre-training step")
        ax.set_ylabel("eval loss (nats/token)")
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    if sft:
        ax = axes[2]
        benches = list(next(iter(sft.values()))["scores"])
        width = 0.8 / len(sft)
        for i, (start, r) in enumerate(_ordered(sft)):
            ax.bar([j + i * width for j in range(len(benches))], [r["scores"].get(b, 0.0) for b in benches],
                   width, label=LABELS.get(start, start), color=COLORS.get(start))
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(benches))], benches, rotation=15, fontsize="small")
        ax.set_ylabel("score after the same SFT")
        ax.set_ylim(0, 1)
        ax.legend(fontsize="x-small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def write_cpt_report(out: Path, summary: dict, recipe: Recipe) -> Path:
    runs, sft = summary["cpt"], summary["sft"]
    cpt_rows = [[LABELS.get(s, s), r["start_step"], r["new_loss_start"], r["new_loss_end"], r["old_loss_start"],
                 r["old_loss_peak"], r["old_loss_end"], r["old_spike"], r["facts_new"], r["facts_old"],
                 round(r["wall_s"])] for s, r in _ordered(runs)]
    benches = list(next(iter(sft.values()))["scores"]) if sft else []
    sft_header = ("start", *benches)
    sft_rows = [[LABELS.get(s, s), *(r["scores"].get(b) for b in benches)] for s, r in _ordered(sft)]
    plot = cpt_plot(summary, out / "report" / "cpt.png")
    tables = [("continued pre-training", CPT_HEADER, cpt_rows)]
    if sft:
        tables.append(("abilities after the same SFT (primary metric of each benchmark)", sft_header, sft_rows))
    atomic_write_text(out / "report" / "cpt.md", "\n\n".join(markdown_table(h, r) for _, h, r in tables) + "\n")
    cpt = recipe.analysis.cpt
    return write_page(out / "report" / "index.html", "mixtune analysis: continued pre-training", [
        (f"One WSD base ({summary['base']['final_step']} steps; stable-phase checkpoint at step "
        f"{summary['base']['stable_step']}), continued for {cpt.steps} steps on {cpt.new_people} new people's "
        f"biographies ({cpt.new_exposures} each) from three starts, each ending with a decay over "
        f"{cpt.decay_ratio:g} of its steps; (b) re-warms over {cpt.warmup_ratio:g} of its steps. AdamW moments "
        f"{'carried from each checkpoint' if cpt.carry_optimizer else 'fresh'}."),
        ("old spike = the highest old-domain loss in the first quarter of the steps minus the loss at the start; "
        "facts = biography completion (exact match) right after continued pre-training, before SFT.")],
        tables, [(plot, "new- and old-domain loss along continued pre-training; abilities after the same SFT")],
        {"recipe": recipe.name, "cpt": cpt.model_dump()})
