"""Admission: whether a resolved job may be sent now, guard by guard.

Allowlist, attempts, age, backoff, breaker and rate limit, in the order `guards.py`
applies them. Import from the module that owns a name: this package imports none of
them, so a command that needs one (`config check` reads the rate limits' defaults)
does not load the rest (the claims, the ledger, structlog).
"""
