"""Resolution: where each dead letter must go back to; the chain is in `chain.py`."""

from retryd.resolve.base import Resolver
from retryd.resolve.chain import ResolverChain, build_chain

__all__ = ["Resolver", "ResolverChain", "build_chain"]
