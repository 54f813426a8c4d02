"""The CAM Explorer's parts (``app_pages/cam_explorer.py``): ``cams`` runs and caches the model; the views draw."""
