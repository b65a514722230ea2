"""The operator's commands: the CLI parser and plan, inspect and iam-policy."""
