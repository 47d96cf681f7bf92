"""synthbrain command-line interface (placeholder until the CLI lands)."""


def main() -> None:
    raise SystemExit("synthbrain: CLI not built yet")
