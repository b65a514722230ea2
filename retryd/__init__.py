"""The retryd package: a retry daemon for AWS dead-letter queues."""
