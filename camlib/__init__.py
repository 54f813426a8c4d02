"""camlib: the pure-Python backend of the CAM Explorer (no Streamlit in here).

Modules:
    cam       -- Grad-CAM-family maps for several layers from one forward/backward pass.
    layers    -- candidate target layers of a model, found by one dry forward pass.
    models    -- the model registry, preprocessing, weight loading and user checkpoints.
    imaging   -- safe decoding of user images (caps before decoding, EXIF, modes).
    overlay   -- heatmap colouring and blending.
    samples   -- bundled sample photos (scikit-image), available offline.
    augment   -- the Augmentation Lab backend, a package that re-exports its modules' public names:
        augment.catalogue -- the editable Albumentations transforms (``TRANSFORMS``), derived from their schemas.
        augment.pipeline  -- seeded pipelines of steps and the ``A.Compose`` they build.
        augment.grid      -- grids of augmented tiles, the images they show, and one image of a grid.
        augment.export    -- JSON/YAML/Python export and re-import of a pipeline.
    errors    -- every typed error (all subclasses of ValueError) with actionable messages.
"""

__version__ = "0.1.0"
