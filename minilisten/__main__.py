"""``python -m minilisten <command>``: data, train-vq, evaluate-vq, train-lm, train-arig, demo, evaluate,
render, serve."""
from __future__ import annotations

import argparse
import importlib
import sys

from .cli_config import ArgumentParser
from .errors import UserError

COMMANDS = {   # command -> (module, function taking the remaining argv, one-line help)
    "data": ("minilisten.data.cli", "main", "generate the synthetic corpus or convert/inspect a dataset"),
    "train-vq": ("minilisten.train_vq", "main", "train a listener-motion VQ-VAE (naive or identity-disentangled)"),
    "evaluate-vq": ("minilisten.train_vq", "main_evaluate", "VQ Rec / Commit / PPL of checkpoints (paper Table 5)"),
    "train-lm": ("minilisten.train_lm", "main", "train the multimodal listener LM (stage 1 or 2)"),
    "train-arig": ("minilisten.train_arig", "main", "train the ARIG-style continuous listener (diffusion MLP head)"),
    "demo": ("minilisten.demo", "main", "the whole pipeline (synthetic corpus or --data DIR): tables, plots, clip"),
    "evaluate": ("minilisten.demo", "main_evaluate", "evaluate saved VQ + LM checkpoints on a dataset"),
    "render": ("minilisten.render", "main", "mp4 of speaker | generated | ground-truth listener heads with subtitles"),
    "serve": ("minilisten.server", "main", "WebSocket server streaming listener frames to avatar/robot clients"),
}


def main(argv: list[str] | None = None) -> int:
    """Run a command. A UserError prints ``error: <message>`` on stderr and returns 2 (``--debug``
    anywhere: its traceback); option errors exit 2 with one such line (cli_config.ArgumentParser)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [x for x in argv if x != "--debug"]
    parser = ArgumentParser(prog="python -m minilisten", formatter_class=argparse.RawDescriptionHelpFormatter,
                            description="Listener head motion from multimodal speaker input (Lai et al., CVPR 2025).",
                            epilog="commands:\n" + "\n".join(f"  {k:<12} {v[2]}" for k, v in COMMANDS.items())
                            + "\n\n`python -m minilisten COMMAND --help` shows a command's options; `python -m "
                            "minilisten.bench` runs the benchmarks. --debug (anywhere): tracebacks for errors.")
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    module, func, _ = COMMANDS[parser.parse_args(argv[:1]).command]
    try:
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    except UserError as e:
        if debug:
            raise
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
