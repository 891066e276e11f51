"""``python -m minilisten <command>``: data, train-vq, evaluate-vq, train-lm, demo, evaluate."""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, function, one-line help); each function takes the remaining argv.
COMMANDS = {
    "data": ("minilisten.data.cli", "main", "generate the synthetic corpus or convert/inspect a dataset"),
    "train-vq": ("minilisten.train_vq", "main", "train a listener-motion VQ-VAE (naive or identity-disentangled)"),
    "evaluate-vq": ("minilisten.train_vq", "main_evaluate", "VQ Rec / Commit / PPL of checkpoints (paper Table 5)"),
    "train-lm": ("minilisten.train_lm", "main", "train the multimodal listener LM (stage 1 or 2)"),
    "demo": ("minilisten.demo", "main", "the whole pipeline on the synthetic corpus; prints Tables 1, 4, 5"),
    "evaluate": ("minilisten.demo", "main_evaluate", "evaluate saved VQ + LM checkpoints on a dataset"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m minilisten",
        description="Listener head motion from multimodal speaker input (Lai et al., CVPR 2025).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {k:<12} {v[2]}" for k, v in COMMANDS.items())
        + "\n\n`python -m minilisten COMMAND --help` shows a command's options; "
        "`python -m minilisten.bench` runs the benchmarks.",
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    args = parser.parse_args(argv[:1])
    module, func, _ = COMMANDS[args.command]
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
