"""``python -m minilisten <command>``: data, train-vq, evaluate-vq, train-lm, train-arig, demo, evaluate,
render, serve."""
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
    "train-arig": ("minilisten.train_arig", "main", "train the ARIG-style continuous listener (diffusion MLP head)"),
    "demo": ("minilisten.demo", "main", "the whole pipeline (synthetic corpus or --data DIR): Tables 1, 4, 5, plots, clip.mp4"),
    "evaluate": ("minilisten.demo", "main_evaluate", "evaluate saved VQ + LM checkpoints on a dataset"),
    "render": ("minilisten.render", "main", "mp4 of speaker | generated | ground-truth listener heads with subtitles"),
    "serve": ("minilisten.server", "main", "WebSocket server streaming listener frames to avatar/robot clients"),
}


#: exception types that are the user's input (bad path, file, option, incompatible checkpoint):
#: printed as one line; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, KeyError, FloatingPointError)


class _UsageError(Exception):
    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog, self.message = prog, message


def _raise_usage(self: argparse.ArgumentParser, message: str):
    raise _UsageError(self.prog, message)


def one_line(e: BaseException) -> str:
    """``error: <what> (<file or option>): <expected>, got <actual>`` on one line."""
    if isinstance(e, _UsageError):   # argparse's own message names the option
        msg = f"{e.message} ({e.prog}); see {e.prog} --help"
    elif isinstance(e, KeyError):
        msg = f"missing key {e.args[0]!r}" if e.args else "missing key"
    else:
        msg = str(e) or type(e).__name__
        if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
            msg = f"{msg} ({e.filename})"
    return "error: " + " ".join(msg.split())


def main(argv: list[str] | None = None) -> int:
    """Run a command. User errors (:data:`USER_ERRORS`, bad options) print one line on stderr
    and return 2; ``--debug`` (anywhere on the command line) shows their traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [x for x in argv if x != "--debug"]
    parser = argparse.ArgumentParser(
        prog="python -m minilisten",
        description="Listener head motion from multimodal speaker input (Lai et al., CVPR 2025).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {k:<12} {v[2]}" for k, v in COMMANDS.items())
        + "\n\n`python -m minilisten COMMAND --help` shows a command's options; "
        "`python -m minilisten.bench` runs the benchmarks. --debug (anywhere): tracebacks for errors.",
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    saved = argparse.ArgumentParser.error
    if not debug:
        argparse.ArgumentParser.error = _raise_usage   # every command's parser: one line, exit 2
    try:
        args = parser.parse_args(argv[:1])
        module, func, _ = COMMANDS[args.command]
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    except (_UsageError, *USER_ERRORS) as e:
        if debug:
            raise
        print(one_line(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        argparse.ArgumentParser.error = saved


if __name__ == "__main__":
    sys.exit(main())
