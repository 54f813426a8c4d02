"""camlib: the pure-Python backend of the CAM Explorer (no Streamlit in here).

Modules:
    cam          -- Grad-CAM-family maps for several layers from one forward/backward pass; the method registry.
    cost         -- what a CAM computation will cost before it starts (extra forwards, a timed forward).
    layouts      -- how a layer's output (NCHW, channels-last NHWC, ViT tokens) reads as a (B, C, h, w) feature map.
    layers       -- candidate target layers of a model, found by one dry forward pass, and the suggested one.
    models       -- the model registry, preprocessing, weight loading and user checkpoints.
    checkpoints  -- the one reading of a saved state dict that fits an architecture (prefixes, training dicts).
    imaging      -- safe decoding of user images (caps before decoding, reduced JPEG decoding, EXIF, modes).
    overlay      -- heatmap colouring and blending.
    drawing      -- pixel helpers for display: PNG/.npy encoding, tile upscaling and labels, grid images.
    samples      -- bundled sample photos (scikit-image), available offline.
    augment      -- the Augmentation Lab backend, a package that re-exports its modules' public names:
        augment.catalogue -- the editable Albumentations transforms (``TRANSFORMS``), derived from their schemas.
        augment.pipeline  -- seeded pipelines of steps and the ``A.Compose`` they build.
        augment.grid      -- grids of augmented tiles, the images they show, and one image of a grid.
        augment.export    -- JSON/YAML/Python export and re-import of a pipeline.
    cifar        -- CIFAR-10 from the official release (md5-checked) or an image-folder copy; the download.
    cifar_models -- CIFAR-10 architectures (ResNet-20, CIFAR ResNet-18) and their normalisation.
    train        -- ``python -m camlib.train``: one-cycle training with an exported pipeline, resumable.
    evaluation   -- batched predictions, confusion matrices, per-class accuracy, prediction flips.
    stability    -- how CAMs and predictions change under a Lab pipeline's augmentations (carried maps, flips).
    metrics      -- faithfulness of maps: deletion/insertion, ROAD, Average Drop/Increase, baselines, sanity checks.
    prediction_cache -- whole-dataset predictions computed once per (weights, data) and kept on disk (no pickle).
    guard        -- the per-model lock and mode restoration for shared (cached) models.
    device       -- the devices models can run on, their names, and the default ($CAMLIB_DEVICE, else CUDA, else CPU).
    contracts    -- shared input-contract checks that raise typed errors naming the argument.
    errors       -- every typed error (all subclasses of ValueError) with actionable messages.
"""

__version__ = "0.1.0"
