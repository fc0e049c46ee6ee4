"""``olmo-sam demo``: the CPU demo study (README command 1).

Micro OLMo-2-style models (41k parameters; AdamW cosine and SAM) pretrained on the
registry-fetched English corpus at 10 and 100 tokens per parameter with three pretraining seeds
each, probed (4/8-bit quantization, Gaussian noise, Hutchinson sharpness), fine-tuned over a
six-LR grid on the demo code domain, analysed and reported. Resumable: run it again to continue
where it stopped. The study files are ``olmo_sam/study/files/demo.yaml`` and ``demo-quick.yaml``
(``quick: true``: its report says that its numbers are not evidence); the longer CPU study is
``recipes/studies/cpu-overtraining.yaml`` (docs/cpu-reproduction.md).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import click

__all__ = ["demo", "demo_study_path"]


def demo_study_path(quick: bool = False) -> Path:
    name = "demo-quick.yaml" if quick else "demo.yaml"
    return Path(str(resources.files("olmo_sam.study") / "files" / name))


@click.command()
@click.option("--quick", is_flag=True, help="The two-minute version CI runs (its numbers are not evidence).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output directory.")
@click.option("--jobs", type=click.IntRange(min=1), default=None, help="Jobs at a time (default 2), >= 1.")
@click.option(
    "--rerun",
    is_flag=True,
    help="Run every job again, replacing its results (as 'study run --rerun'); default: resume.",
)
@click.option("--dry-run", is_flag=True, help="Show the planned jobs only.")
def demo(quick, out, jobs, rerun, dry_run):
    """Pretrain (2 arms x 2 budgets x 3 seeds), probe, fine-tune and report micro models on CPU
    (about 5 min on 2 idle cores; --quick: about 2 min, not evidence)."""
    from .study.cli import run_study_command, start_study

    resume = "olmo-sam demo" + (" --quick" if quick else "") + (f" --out {out}" if out else "")
    plan = run_study_command(
        lambda: start_study(
            demo_study_path(quick), out=out, jobs=jobs, rerun=rerun, dry_run=dry_run, resume_command=resume
        ),
        resume,
    )
    if dry_run:
        return
    report = plan.out / "report" / "report.html"
    summary = plan.out / "analysis" / "summary.json"
    if summary.exists():
        if quick:
            click.echo(
                "\nFindings of the quick demo (a smoke test: too small to be evidence for or against SAM; "
                "the pre-registered hypothesis first):"
            )
        else:
            click.echo("\nFindings (measured in this run; the pre-registered hypothesis first):")
        s = json.loads(summary.read_text())
        for h in s.get("hypotheses", []):
            click.echo(f"  * {h['text']}")
        if s.get("interval"):
            click.echo(f"  ({s['interval']['description']})")
        for f in s.get("findings", []):
            click.echo(f"  - {f['text'] if isinstance(f, dict) else f}")
    click.echo(f"\nreport: {report.resolve()}")
    click.echo(f"markdown: {(plan.out / 'report' / 'report.md').resolve()}")
