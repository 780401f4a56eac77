"""Memory per visitor, counted in bytes: what each session's ``gr.State`` values hold (a picture or
a clip's frames, their tower features, the pixels drawn on), with one budget for all sessions.
When a write takes the total past :data:`studio.limits.SESSIONS_BYTES`, the least recently used
*other* sessions' state values are freed first, until it fits again. Gradio's own limit counts
sessions, not bytes: a thousand sessions of one 1080p clip each would be tens of GB.

A visitor whose analysis was freed finds the page as it was; the next slider move or Run
analyses the picture again (uploads stay on disk for ``PRUNESID_UPLOAD_MAX_AGE_S``).
"""
from __future__ import annotations

import logging
import threading

from gradio.components import State
from gradio.state_holder import SessionState, StateHolder

from prunesid_vlm.pipeline import nbytes

from . import limits

log = logging.getLogger("prunesid.studio")


class BudgetedSessionState(SessionState):
    """A session's values, telling its holder how many bytes its state values take."""

    holder: "BudgetedStateHolder"
    session_id: str

    def __setitem__(self, key: int, value) -> None:
        super().__setitem__(key, value)
        if isinstance(self.blocks_config.blocks.get(key), State):
            self.holder.account(self.session_id, key, value)


class BudgetedStateHolder(StateHolder):
    """Gradio's :class:`StateHolder` with a byte budget over every session's state values."""

    budget: int
    bytes_by_session: dict[str, dict[int, int]]
    evictions: int

    def _budget_init(self, budget: int) -> None:
        self.budget = budget
        self.bytes_by_session = {}
        self.evictions = 0
        self._budget_lock = threading.Lock()
        for session_id, state in self.session_data.items():  # sessions opened before the budget
            self._adopt(session_id, state)

    def _adopt(self, session_id: str, state: SessionState) -> None:
        if not isinstance(state, BudgetedSessionState):
            state.__class__ = BudgetedSessionState
        state.holder, state.session_id = self, session_id

    def __getitem__(self, session_id: str) -> SessionState:
        state = super().__getitem__(session_id)
        self._adopt(session_id, state)
        return state

    @property
    def total_bytes(self) -> int:
        return sum(sum(parts.values()) for parts in self.bytes_by_session.values())

    def account(self, session_id: str, key: int, value) -> None:
        """``session_id`` stored ``value`` under state ``key``: count it, and free the least recently
        used other sessions' state while the total is over the budget."""
        with self._budget_lock:
            self.bytes_by_session.setdefault(session_id, {})[key] = nbytes(value)
            for old in [s for s in list(self.session_data) if s != session_id]:
                if self.total_bytes <= self.budget:
                    break
                if sum(self.bytes_by_session.get(old, {}).values()) == 0:
                    continue
                self._free(old)

    def _free(self, session_id: str) -> None:
        state = self.session_data.get(session_id)
        freed = sum(self.bytes_by_session.pop(session_id, {}).values())
        if state is not None:
            for key in [k for k in state.state_data if isinstance(state.blocks_config.blocks.get(k), State)]:
                state.state_data[key] = None
        self.evictions += 1
        log.info("freed a session's analysis (%.1f MB) to stay within %.0f MB for all sessions", freed / 2**20,
                 self.budget / 2**20)

    def delete_state(self, session_id: str, expired_only: bool = False) -> None:
        super().delete_state(session_id, expired_only)
        with self._budget_lock:
            state = self.session_data.get(session_id)
            parts = self.bytes_by_session.get(session_id, {})
            for key in [k for k in parts if state is None or k not in state.state_data]:
                parts.pop(key)


def budget_sessions(holder: StateHolder, budget: int | None = None) -> BudgetedStateHolder:
    """Put ``holder`` (a running app's ``state_holder``) under a byte budget, in place."""
    if not isinstance(holder, BudgetedStateHolder):
        holder.__class__ = BudgetedStateHolder
    holder._budget_init(limits.SESSIONS_BYTES if budget is None else budget)
    return holder
