"""Streamlit dashboard of the streamkv results store (read-only; reads only through `store`).

`dashboard.views` shapes store frames into tables and chart data (pure, testable),
`dashboard/app.py` is the Streamlit script, `dashboard.launch.launch` starts it.
"""
