"""The misclassification gallery's parts (``app_pages/misclassifications.py``)."""
