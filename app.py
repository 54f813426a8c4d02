"""CAM Explorer: the app's router and frame. Run with `streamlit run app.py`."""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks for updates at import otherwise

import streamlit as st  # noqa: E402
import torch  # noqa: E402

import camlib  # noqa: E402
from ui.jobs import TORCH_THREADS  # noqa: E402
from ui.server import memory, net  # noqa: E402
from ui.server.run_log import timed_run  # noqa: E402
from ui.text import md  # noqa: E402

# An emoji favicon is an inline data: URL; a :material/...: one would be fetched from fonts.gstatic.com (offline app).
st.set_page_config(page_title="CAM Explorer", page_icon="🔥", layout="wide")


@st.cache_resource
def _configure_torch() -> int:
    """Once per process: bound torch's intra-op threads so concurrent sessions do not oversubscribe the CPU (the
    count is ``ui.jobs.TORCH_THREADS``, which the CAM jobs share)."""
    torch.set_num_threads(TORCH_THREADS)
    return TORCH_THREADS


@st.cache_resource
def _configure_server() -> int:
    """Once per process: TCP_NODELAY on the server's connections (``ui.server.net``: Streamlit leaves Nagle's algorithm
    on, which delays the end of most reruns by the browser's delayed ACK, about 40 ms)."""
    return net.enable_tcp_nodelay()


threads = _configure_torch()
_configure_server()
memory.freeze_at_run_start()  # long-lived objects leave the full collections: after the imports, the first model
pages = [
    st.Page("app_pages/cam_explorer.py", title="CAM Explorer", icon=":material/local_fire_department:", default=True),
    st.Page("app_pages/augmentation_lab.py", title="Augmentation Lab", icon=":material/auto_awesome_mosaic:"),
    st.Page("app_pages/misclassifications.py", title="Misclassifications", icon=":material/report:"),
]
page = st.navigation(pages)
with st.sidebar:  # the app-wide inputs (data root, device) are drawn by each page through ui.app_inputs
    st.caption(
        md(
            "camlib {camlib} · torch {torch} · {threads} CPU threads",
            camlib=camlib.__version__,
            torch=torch.__version__,
            threads=threads,
        )
    )
with timed_run(page.title):  # a debug line per run: page, session, outcome, duration
    page.run()
