"""Replicas that agree: membership, shared rate budgets and shared breakers."""

from retryd.cluster.agree import SharedBreaker, Step, live_members, next_step, share
from retryd.cluster.base import Cluster, SingleReplica
from retryd.cluster.dynamodb import DynamoDbCluster
from retryd.cluster.factory import member_ttl_s, open_cluster
from retryd.cluster.view import ClusterView, hold_as_the_cluster_does, read_cluster

__all__ = [
    "Cluster",
    "ClusterView",
    "DynamoDbCluster",
    "SharedBreaker",
    "SingleReplica",
    "Step",
    "hold_as_the_cluster_does",
    "live_members",
    "member_ttl_s",
    "next_step",
    "open_cluster",
    "read_cluster",
    "share",
]
