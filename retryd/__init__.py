"""retryd: a retry daemon for AWS dead-letter queues."""
