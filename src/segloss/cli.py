"""The command-line entry points of an installed segloss (``[project.scripts]`` in pyproject.toml).

One script per command — ``segloss-train``, ``segloss-eval``, ``segloss-predict``, ``segloss-export``,
``segloss-stats``, ``segloss-compare``, ``segloss-report``, ``segloss-rescore``, ``segloss-download``,
``segloss-search``, ``segloss-synthetic``, ``segloss-cityscapes-eval`` — and
``segloss COMMAND [ARGS…]`` for all of them, with ``segloss --version``. Each does what ``python -m
segloss.<module>`` (and the Makefile target of the same name) does; Hydra commands take the same overrides,
``--config-dir DIR`` included (a folder of the user's own configs, searched beside the packaged ones).
"""

from __future__ import annotations

import importlib
import sys

from segloss import __version__

COMMANDS = {  # name: (module:function, what it does)
    "train": ("segloss.train:main", "train a model (Hydra overrides: experiment=…, loss=…, trainer.…)"),
    "eval": ("segloss.eval:main", "evaluate a checkpoint: ckpt_path=… [split=val] [save_predictions=true]"),
    "predict": ("segloss.predict:main", "label a folder of images: ckpt_path=… input_dir=… output_dir=…"),
    "export": ("segloss.export:main", "ONNX/TorchScript file of a checkpoint's net: ckpt_path=… [format=onnx]"),
    "stats": ("segloss.stats:main", "label statistics and class weights of a dataset: [data=…]"),
    "compare": ("segloss.cli:compare", "compare the losses of a sweep: [DIR] [--baseline ce] [--plan 1]"),
    "report": ("segloss.report.cli:main", "HTML report + figures of a sweep: [DIR] [--baseline ce] [--pair A,B]"),
    "rescore": ("segloss.rescore:main", "add per-image quality counts to older runs: DIR"),
    "download": ("segloss.download.cli:main", "fetch and verify a dataset or encoder weights: download=…"),
    "search": ("segloss.cli:search", "Optuna search of loss hyper-parameters: [hparams_search=focal_optuna]"),
    "cityscapes-eval": ("segloss.cli:cityscapes_eval", "the official Cityscapes evaluation of exported PNGs: PRED"),
    "synthetic": ("segloss.data.synthetic:main", "generate the embedded synthetic_city dataset: [--root …]"),
}
DEFAULT_SEARCH = "focal_optuna"


def _target(spec: str):
    module, function = spec.split(":")
    return getattr(importlib.import_module(module), function)


def compare() -> int:
    """``segloss-compare``: :func:`segloss.compare.main` with an exit status (it returns the tables)."""
    _target("segloss.compare:main")()
    return 0


def cityscapes_eval() -> int:
    """``segloss-cityscapes-eval``: :func:`segloss.cityscapes_eval.main` with an exit status."""
    _target("segloss.cityscapes_eval:main")()
    return 0


def search() -> None:
    """``segloss-search``: a training run with an Optuna sweeper (``hparams_search=focal_optuna`` unless one is
    named); needs the ``search`` extra (``pip install 'segloss[search]'``)."""
    try:
        importlib.import_module("hydra_plugins.hydra_optuna_sweeper")
    except ImportError:
        print("segloss-search: error: the Optuna sweeper is not installed; pip install 'segloss[search]'",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2) from None
    if not any(arg.lstrip("+~").startswith("hparams_search=") for arg in sys.argv[1:]):
        sys.argv.insert(1, f"hparams_search={DEFAULT_SEARCH}")
    _target("segloss.train:main")()


def _usage() -> str:
    lines = [f"usage: segloss COMMAND [ARGS…]   (segloss {__version__})", "", "commands:"]
    lines += [f"  {name:<10} {what}" for name, (_, what) in COMMANDS.items()]
    lines += ["", "segloss COMMAND --help shows a command's own options; segloss --version its version."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int | None:
    """``segloss COMMAND [ARGS…]``: runs ``segloss-COMMAND ARGS…``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"segloss {__version__}")
        return 0
    if args[0] not in COMMANDS:
        print(f"segloss: error: unknown command {args[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    sys.argv = [f"segloss-{args[0]}", *args[1:]]  # Hydra and argparse read sys.argv
    return _target(COMMANDS[args[0]][0])()


if __name__ == "__main__":
    raise SystemExit(main())
