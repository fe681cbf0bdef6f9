"""The calculator's web app: `streamlit run app.py`.

Pages (in pages/) hold the UI only; every number comes from the `capacity` package.
The sidebar's scenario (pages/_ui.py) is shared by every page and mirrored into the URL.
"""

import logging

import streamlit as st

from pages import _ui

st.set_page_config(page_title="BP vs MeZO memory calculator", page_icon=":material/calculate:", layout="wide")

PAGES = [
    st.Page("pages/calculator.py", title="Calculator", icon=":material/calculate:", default=True),
    st.Page("pages/memory_vs_context.py", title="Memory vs context", icon=":material/show_chart:"),
    st.Page("pages/what_fits.py", title="What fits", icon=":material/memory:"),
    st.Page("pages/time_tradeoff.py", title="Time trade-off", icon=":material/timer:"),
    st.Page("pages/validate.py", title="Validate", icon=":material/science:"),
]

# Each page draws the shared sidebar itself (_ui.start_page).
page = st.navigation(PAGES)
st.session_state[_ui.ENTRY_FLAG] = True
requested = st.session_state.pop(_ui.REQUESTED_PAGE, None)
if requested:            # a deep link that Streamlit first ran without this file
    st.switch_page(requested)
try:
    page.run()
except ValueError as err:       # capacity's answer to a scenario it cannot take
    st.error(f"These settings cannot be computed: {err}. Change the scenario in the sidebar.")
except Exception as err:        # never a traceback in the page; the server log keeps it
    logging.getLogger(__name__).exception("page %s failed", page.title)
    st.error(f"Something went wrong on this page ({type(err).__name__}: {err}). "
             "Try other settings in the sidebar, or reload the page.")
finally:
    # After the page, so that its own controls are in the link too.
    _ui.write_url()
