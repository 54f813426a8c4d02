"""The Augmentation Lab's parts (``app_pages/augmentation_lab.py``)."""
