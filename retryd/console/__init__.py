"""The team's web console over the read model and the CLI's documents (`retryd console`).

Nothing is re-exported here: the command line imports `retryd.console.command` to add
the subcommand, and that must not pull the web server in for every `retryd --help`.
"""
