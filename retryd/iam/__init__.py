"""IAM: the least-privilege policy a configuration needs, and the KMS keys behind its
encrypted queues and topics (`retryd iam-policy`)."""
