"""synthbrain command-line interface (`synthbrain = "synthbrain.cli:main"`).

`app` is the entry point (error handling, exit codes), `options` the Typer app and the option
aliases every command shares, `data` the data commands (phantom, preprocess, weights, manifest),
`engines` the engine-backed ones (train, generate, heal, implant, enhance), `evaluate` the report.
The command modules import torch and the api inside their commands, so `--help` stays fast.
"""

from synthbrain.cli.app import main

__all__ = ["main"]
