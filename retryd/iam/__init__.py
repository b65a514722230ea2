"""IAM: the least-privilege policy a configuration needs, and its KMS keys (`retryd iam-policy`).

The keys are those behind the encrypted queues and topics the policy reaches.
"""
