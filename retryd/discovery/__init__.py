"""Which DLQs retryd drains, what feeds each of them, and the leased look at a queue."""
