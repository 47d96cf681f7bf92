"""The CLI called in-process, as every CLI test calls it (tests/ is on sys.path: `cli_runner`)."""

from __future__ import annotations

import json

from synthbrain.cli import main


def exit_code(args: list[str]) -> int:
    """Run `synthbrain ARGS`; its exit code (0 when it returns normally)."""
    try:
        main(args)
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    return 0


def invoke(args: list[str], capsys) -> tuple[int, str, str]:  # noqa: ANN001
    """Run `synthbrain ARGS`; (exit code, stdout, stderr)."""
    code = exit_code(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def invoke_json(args: list[str], capsys) -> tuple[int, dict, str]:  # noqa: ANN001
    """Run `synthbrain ARGS --json --device cpu`; (exit code, summary, stderr), the summary being
    the last stdout line's JSON when the command succeeded (else {})."""
    code, out, err = invoke([*args, "--json", "--device", "cpu"], capsys)
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and lines else {}), err
