"""The ``olmo-sam`` command line (click). Sub-commands load lazily from their modules."""

from __future__ import annotations

import importlib
import os

import click

# name -> "module:attribute" of a click command or group. One line per sub-command; each module
# owns its own options.
COMMANDS = {
    "demo": "olmo_sam.demo:demo",
    "pretrain": "olmo_sam.recipes.pretrain:main",
    "midtrain": "olmo_sam.recipes.midtrain:main",
    "bench": "olmo_sam_tools.bench:bench",
    "data": "olmo_sam.data.cli:data",
    "export-hf": "olmo_sam.hf:export_hf_command",
    "import-hf": "olmo_sam.hf:import_hf_command",
    "finetune": "olmo_sam.finetune.cli:finetune",
    "sweep": "olmo_sam.finetune.cli:sweep",
    "forgetting": "olmo_sam.analysis.cli:forgetting",
    "probe": "olmo_sam.probes.cli:probe",
    "cfs": "olmo_sam.cfs.cli:cfs",
    "eval": "olmo_sam.evals.cli:eval_group",
    "study": "olmo_sam.study.cli:study",
    "report": "olmo_sam.study.cli:report",
}


class LazyGroup(click.Group):
    def invoke(self, ctx):
        """Configuration and file errors that reach the top are one ``Error:`` line (exit 1)."""
        from .preflight import cli_errors

        return cli_errors(super().invoke)(ctx)

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, cmd_name):
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise click.ClickException(
                f"'{cmd_name}' needs the Python package '{e.name}'; install it with pip install 'olmo-sam[all]'"
            ) from e
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="olmo-sam")
def main():
    """Sharpness-aware pretraining for OLMo-core, and the forgetting measurements around it.

    One name per concept across commands and study files (--out, --batch-size,
    --micro-batch-size, --seq-len, --executor, ...): see docs/cli.md.

    \b
    Example:
      olmo-sam demo --quick --out runs/demo-quick
      olmo-sam study run paper-60m --dry-run --allow-missing-data   # plan a shipped study, no data needed
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")


if __name__ == "__main__":
    main()
