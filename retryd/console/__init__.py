"""`retryd console`: the team's web console over the read model and the CLI's documents."""

from retryd.console.server import serve_console

__all__ = ["serve_console"]
