"""The Streamlit side of the app: what the pages in ``app_pages/`` draw and cache.

Where to look, in one hop from a page:

- ``ui/explorer/``: the CAM Explorer (``app_pages/cam_explorer.py``): its model runs and their caches (``cams``), the
  one-method view (``cam_view``), the method x layer grid (``cam_grid``), pixel attribution (``pixel_view``), the
  faithfulness and sanity checks (``faithfulness_view``) and its shareable link (``cam_url``).
- ``ui/lab/``: the Augmentation Lab (``app_pages/augmentation_lab.py``): the pipeline editor, the grid's cost check,
  the step-by-step view, the model in the loop, the stability panel and its link.
- ``ui/gallery/``: the misclassification gallery (``app_pages/misclassifications.py``): the whole split's predictions,
  a page's CAMs (``predictions``) and the batch-output tables (``batch_table``).
- ``ui/server/``: the server's housekeeping, for every page: memory (``memory``), TCP_NODELAY (``net``), the run
  log (``run_log``).
- Here, what more than one page uses: the job limits every model run goes through (``jobs``), the model and data
  caches (``models``, ``datasets``), the result stores (``stores``), overlays (``overlays``), checkpoints, downloads,
  widgets, the app-wide inputs, session-state keys (``keys``), text escaping (``text``), figures and ``last_good``.

A new page ``app_pages/<page>.py`` gets its own ``ui/<page>/`` beside these (a detection and segmentation page:
``app_pages/detection.py`` with ``ui/detection/``; a labelled-data Lab: ``app_pages/data_lab.py`` with
``ui/data_lab/``), holding its model runs (each inside ``ui.jobs.model_job``, which ``tests/test_ui_jobs.py`` checks)
and its views; what it shares with other pages stays here.
"""
