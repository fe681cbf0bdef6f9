"""Expanders whose content is computed and drawn only while they are open.

A plain st.expander runs its content on every run and sends it to the browser, which
builds every element inside it even while it is closed: a table in a closed expander costs
a page load most of what an open one does (docs/ui_latency.md). With a key and
on_change="rerun", Streamlit tracks whether the expander is open and reruns the page when
the user opens or closes it, so a page draws a secondary table (variants, devices needed,
the textbook form) only for the user who opens it.
"""

from __future__ import annotations

import streamlit as st


def lazy(label: str, key: str, expanded: bool = False):
    """An expander that tracks whether it is open (its `.open`): draw its content only
    `if box.open`. `expanded`: whether it opens open when this page first draws it in the
    session (after that, the user's choice; st.session_state[key] holds it)."""
    st.session_state.setdefault(key, expanded)
    return st.expander(label, key=key, on_change="rerun")
