"""camlib: the pure-Python backend of the CAM Explorer (no Streamlit in here).

Modules:
    cam       -- Grad-CAM-family maps for several layers from one forward/backward pass.
    layers    -- candidate target layers of a model, found by one dry forward pass.
    models    -- the model registry, preprocessing, weight loading and user checkpoints.
    imaging   -- safe decoding of user images (caps before decoding, EXIF, modes).
    overlay   -- heatmap colouring and blending.
    samples   -- bundled sample photos (scikit-image), available offline.
    errors    -- typed errors (all subclasses of ValueError) with actionable messages.
"""

__version__ = "0.1.0"
