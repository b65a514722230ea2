"""Replicas that agree: membership, shared rate budgets and shared breakers.

Import from the module that owns a name: this package imports none of them, so
`config check` (which splits rates with `agree.share`) does not load the DynamoDB
cluster with it.
"""
