"""Environments: tasks that answer the model's tool calls, one instance per rollout.

``base`` holds the interface (:class:`Step`, :class:`Environment`, :func:`make_environment`);
``single_turn`` is the paper's task, ``bfcl`` BFCL v3 multi-turn, ``lookup`` the synthetic
two-call task a CPU model can learn. docs/environments.md describes them and how to add one.
"""
from tooln1.environments.base import Environment, Step, make_environment, tool_responses
from tooln1.environments.execution import ToolLimits

__all__ = ["Environment", "Step", "ToolLimits", "make_environment", "tool_responses"]
