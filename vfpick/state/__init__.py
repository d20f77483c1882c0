"""The locked claims store (see docs/DESIGN.md, "State")."""

from vfpick.state.store import ClaimSet, StateStore

__all__ = ["ClaimSet", "StateStore"]
