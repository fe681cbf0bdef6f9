"""The calculator's web app: `streamlit run app.py`.

Pages (in ui/) hold the UI only; every number comes from the `capacity` package. The
sidebar's scenario (ui/_scenario.py, ui/_sidebar.py) is shared by every page and mirrored
into the URL. The pages live in ui/ rather than pages/, so that Streamlit never runs one on
its own (its older pages-folder mode): a deep link on a fresh server runs this script,
which opens the linked page.
"""

import logging

import streamlit as st
from streamlit import delta_generator

from ui import _background, _format, _runs, _scenario

# Before its first element in a process, Streamlit asks whether it runs in a Python REPL
# (to print a warning there) by reading the source of every frame on the stack: 0.1 s of a
# fresh server's first page. Under `streamlit run` it never is, so skip the check.
delta_generator._use_warning_has_been_displayed = True

st.set_page_config(page_title="BP vs MeZO memory calculator", page_icon=":material/calculate:", layout="wide")

PAGES = [
    st.Page("ui/calculator.py", title="Calculator", icon=":material/calculate:", default=True),
    st.Page("ui/memory_vs_context.py", title="Memory vs context", icon=":material/show_chart:"),
    st.Page("ui/what_fits.py", title="What fits", icon=":material/memory:"),
    st.Page("ui/time_tradeoff.py", title="Time trade-off", icon=":material/timer:"),
    st.Page("ui/validate.py", title="Validate", icon=":material/science:"),
]

_background.start_fork_server()    # once per app; What fits' searches fork from it
_runs.prefetch_engine_check()       # once per app; the Validate page needs it
page = st.navigation(PAGES)
try:
    page.run()
except ValueError as err:       # capacity's answer to a scenario it cannot take
    st.warning(f"capacity cannot answer for these settings: {_format.md(err)}. Change the scenario in the sidebar.")
except Exception as err:        # never a traceback in the page; the server log keeps it
    logging.getLogger(__name__).exception("page %s failed", page.title)
    st.error(f"Something went wrong on this page ({_format.md(type(err).__name__)}: {_format.md(err)}). "
             "Try other settings in the sidebar, or reload the page.")
finally:
    # After the page, so that its own controls are in the link too.
    _scenario.write_url()
