"""The structural pruning core: channel-coupling groups and physical surgery for any CNN."""

from __future__ import annotations

# imported for its registration: nn.MultiheadAttention is pruned by heads
from prunekit.graph import attention  # noqa: F401
from prunekit.graph.core import Graph, Group, Member, Plan, build
from prunekit.graph.explain import Report, explain
from prunekit.graph.flow import Flow
from prunekit.graph.handlers import Call, Handler, handler_for, register_handler
from prunekit.graph.ops import OpCall, register_op

__all__ = [
    "Call",
    "Flow",
    "Graph",
    "Group",
    "Handler",
    "Member",
    "OpCall",
    "Plan",
    "Report",
    "build",
    "explain",
    "handler_for",
    "register_handler",
    "register_op",
]
