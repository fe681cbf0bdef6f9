"""The Streamlit app's pages (calculator.py, ...) and their helpers (_scenario.py, ...); see app.py."""
