"""Replicas that agree: membership, shared rate budgets and shared breakers."""

from retryd.cluster.agree import SharedBreaker, Step, live_members, next_step, share
from retryd.cluster.base import Cluster, SingleReplica
from retryd.cluster.dynamodb import DynamoDbCluster
from retryd.cluster.factory import member_ttl_s, open_cluster

__all__ = [
    "Cluster",
    "DynamoDbCluster",
    "SharedBreaker",
    "SingleReplica",
    "Step",
    "live_members",
    "member_ttl_s",
    "next_step",
    "open_cluster",
    "share",
]
