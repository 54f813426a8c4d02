"""Every ``st.session_state`` key of the app, named once: widget keys and the slots that keep state across reruns.

Each key has one writer, named in its comment; every other module only reads it. Widget groups in ``ui.widgets``
build their keys from a page prefix (``CAM``, ``AUG``), e.g. ``f"{CAM}_model"``; pipeline step widgets carry their
step id (``step_widget``). ``tests/test_ui_keys.py`` fails on a key string written anywhere but here.
"""

from __future__ import annotations

import re

# --- app-wide inputs (the sidebar of every page, through ui.app_inputs) -----------------------------------------------
DATA_ROOT = "app_data_root"  # ui.app_inputs: the CIFAR-10 data root text input, one for every page
DEVICE = "app_device"  # ui.app_inputs: the device selectbox (cpu, cuda:N, mps), one for every page that runs a model

# --- CAM Explorer (app_pages/cam_explorer.py) ------------------------------------------------------------------------
CAM = "cam"  # prefix of ui.widgets' groups on this page: cam_model, cam_last_model, cam_source, cam_alpha...
CAM_METHOD = "cam_method"  # app_pages/cam_explorer.py: method selectbox
CAM_CLASS_MODE = "cam_class_mode"  # app_pages/cam_explorer.py: top-1 or a chosen class
CAM_TOP5 = "cam_top5"  # app_pages/cam_explorer.py: top-k chart
CAM_MAGNITUDES = "cam_magnitudes"  # app_pages/cam_explorer.py: layer magnitude chart
CAM_DETAIL_LAYER = "cam_detail_layer"  # app_pages/cam_explorer.py: layer of the detailed view and export
CAM_HEATMAP = "cam_heatmap"  # app_pages/cam_explorer.py: interactive heatmap
CAM_START = "cam_start"  # ui.explorer.cam_view: the button that starts a slow (perturbation) method
CAM_LAST_VIEW = "cam_last_view"  # ui.last_good (from the CAM page): the last CAM that worked, with classes and image
CAM_FAITH_START = "cam_faith_start"  # ui.explorer.faithfulness_view: button that computes the faithfulness grid
CAM_FAITH_CELL = (
    "cam_faith_cell"  # ui.explorer.faithfulness_view: the (method, layer) cell whose curves and sanity are shown
)
CAM_FAITH_CURVES = "cam_faith_curves"  # ui.explorer.faithfulness_view: deletion/insertion curves chart
CAM_SANITY_START = "cam_sanity_start"  # ui.explorer.faithfulness_view: button that runs the sanity checks
CAM_SANITY_CURVE = "cam_sanity_curve"  # ui.explorer.faithfulness_view: cascading-randomisation chart
CAM_VIEW = "cam_view"  # app_pages/cam_explorer.py: one method, or the method x layer grid
CAM_GRID_METHODS = "cam_grid_methods"  # ui.explorer.cam_grid: the grid's methods (rows)
# ui.explorer.cam_grid (through ui.explorer.cam_view.ready_to_start): starts slow methods of the grid
CAM_GRID_START = "cam_grid_start"
CAM_LAST_GRID = "cam_last_grid"  # ui.last_good (from ui.explorer.cam_grid): the last grid that worked, with its context
CAM_PIXEL_METHOD = "cam_pixel_method"  # ui.explorer.pixel_view: the pixel-attribution method
CAM_LAST_PIXEL = "cam_last_pixel"  # ui.last_good (from ui.explorer.pixel_view): the last attribution that worked
CAM_LINK = "cam_link"  # ui.explorer.cam_url: the CAM Explorer settings last read from or written to the URL query
CAM_COUNTERFACTUAL = "cam_counterfactual"  # ui.explorer.cam_view.method_options: explain -score (negated gradients)
CAM_AUG_SMOOTH = "cam_aug_smooth"  # ui.explorer.cam_view.method_options
CAM_EIGEN_SMOOTH = "cam_eigen_smooth"  # ui.explorer.cam_view.method_options
CAM_SEED = "cam_seed"  # ui.explorer.cam_view.method_options: seed of the stochastic methods
CAM_SAMPLES = "cam_samples"  # ui.explorer.cam_view.method_options: samples of the sampling methods
CAM_SIGNED = "cam_signed"  # ui.explorer.cam_view: the detailed view shows the signed raw map


def cam_layers(model_key: str) -> str:
    """ui.widgets.layer_picker (on the CAM page): the target-layer multiselect of one model. A new model gets a fresh
    widget, so its own suggested layer, without a marker key saying which model the selection belongs to."""
    return f"cam_layers:{model_key}"


def cam_class(model_key: str) -> str:
    """app_pages/cam_explorer.py: the chosen class of one model (a new model starts at its own top-1 class)."""
    return f"cam_class:{model_key}"


# --- Augmentation Lab (app_pages/augmentation_lab.py, ui.lab.pipeline_editor, ui.lab.model_loop) ----------------------
AUG = "aug"  # prefix of ui.widgets' groups on this page: aug_source, aug_sample, aug_upload, aug_split, aug_download...
AUG_IMAGES = "aug_images"  # app_pages/augmentation_lab.py: CIFAR-10 or a photo
AUG_ROWS = "aug_rows"  # app_pages/augmentation_lab.py
AUG_COLS = "aug_cols"  # app_pages/augmentation_lab.py
AUG_MODE = "aug_mode"  # app_pages/augmentation_lab.py: many images or one
AUG_CLASSES = "aug_classes"  # app_pages/augmentation_lab.py: class filter
AUG_IMAGE_INDEX = "aug_image_index"  # app_pages/augmentation_lab.py: the image in "one" mode
AUG_SHOW_LABELS = "aug_show_labels"  # app_pages/augmentation_lab.py
AUG_TILE = "aug_tile"  # app_pages/augmentation_lab.py: tile whose applied parameters are shown
AUG_LAST_DRAWN = "aug_last_drawn"  # ui.last_good (from the Lab): the last grid that worked, drawn (PNGs, summary)
AUG_LAST_GRID = "aug_last_grid"  # app_pages/augmentation_lab.py: the grid shown (the last good one after an error)
AUG_MODEL_LOOP = "aug_model_loop"  # ui.lab.model_loop: model-in-the-loop toggle
AUG_LOOP_MODEL = "aug_loop_model"  # ui.lab.model_loop: its CIFAR-10 model
AUG_STEPS = "aug_steps"  # ui.lab.pipeline_editor: the canonical pipeline steps
AUG_NEXT_ID = "aug_next_id"  # ui.lab.pipeline_editor: next step id
AUG_SEED = "aug_seed"  # ui.lab.pipeline_editor: the canonical seed
AUG_SEED_INPUT = "aug_seed_input"  # ui.lab.pipeline_editor: the seed number input (and "New samples", import)
AUG_NEW_SAMPLES = "aug_new_samples"  # ui.lab.pipeline_editor: button
AUG_ADD_CHOICE = "aug_add_choice"  # ui.lab.pipeline_editor: transform to add
AUG_ADD = "aug_add"  # ui.lab.pipeline_editor: button
AUG_IMPORT = "aug_import"  # ui.lab.pipeline_editor: pipeline JSON uploader
AUG_IMPORTED_ID = "aug_imported_id"  # ui.lab.pipeline_editor: the upload already applied
AUG_DL_JSON = "aug_dl_json"  # ui.lab.pipeline_editor: export buttons
AUG_DL_YAML = "aug_dl_yaml"
AUG_DL_PY = "aug_dl_py"
AUG_SPLIT = "aug_split"  # ui.widgets.cifar_input (on the Lab): the CIFAR-10 split radio (set by ui.lab.url from a link)
AUG_LAST_STEPS = "aug_last_steps"  # ui.lab.steps: the last step-by-step view that worked (shown after an error)
AUG_LINK = "aug_link"  # ui.lab.url: the Lab settings last read from or written to the URL query
AUG_STAB_MODEL = "aug_stab_model"  # ui.lab.stability: the stability panel's CIFAR-10 model
AUG_STAB_LAYER = "aug_stab_layer"  # ui.lab.stability: its target layer
AUG_STAB_METHOD = "aug_stab_method"  # ui.lab.stability: its CAM method
AUG_STAB_VIEWS = "aug_stab_views"  # ui.lab.stability: views per image
AUG_STAB_IMAGE = "aug_stab_image"  # ui.lab.stability: the image of the one-image strip
AUG_STAB_K = "aug_stab_k"  # ui.lab.stability: K images of the summary and the flip curves
AUG_STAB_PARAM = "aug_stab_param"  # ui.lab.stability: the swept (step, parameter)
AUG_STAB_POINTS = "aug_stab_points"  # ui.lab.stability: points of a flip curve
AUG_STAB_SHARE = "aug_stab_share"  # ui.lab.stability: the flip share marked on the curve
AUG_STAB_RUN_ONE = "aug_stab_run_one"  # ui.lab.stability: buttons
AUG_STAB_RUN_SUMMARY = "aug_stab_run_summary"
AUG_STAB_RUN_CURVE = "aug_stab_run_curve"
AUG_STAB_LAST_ONE = "aug_stab_last_one"  # ui.lab.stability: the last good result of each part, with its key
AUG_STAB_LAST_SUMMARY = "aug_stab_last_summary"
AUG_STAB_LAST_CURVE = "aug_stab_last_curve"
AUG_START = "aug_start"  # ui.lab.grid: the button that draws a grid estimated above the budget
AUG_APPROVED = "aug_approved"  # ui.lab.grid: the grid request the button approved, and the grid drawn for it
STEP_WIDGET = re.compile(r"^aug_s\d+_")  # widget keys of pipeline steps: aug_s{id}_{param}, aug_s{id}__p, ...


def step_widget(step_id: int, name: str) -> str:
    """ui.lab.pipeline_editor: the widget of one step's parameter (``name``) or control (``_p``, ``_enabled``...)."""
    return f"aug_s{step_id}_{name}"


# --- Misclassifications (app_pages/misclassifications.py) ------------------------------------------------------------
GAL_MODEL = "gal_model"  # app_pages/misclassifications.py: model selectbox
GAL_LAST_MODEL = "gal_last_model"  # ui.last_good (from the gallery): the last model that loaded
GAL_CONFUSION = "gal_confusion"  # app_pages/misclassifications.py: clickable confusion matrix
GAL_CLICKED = "gal_clicked"  # app_pages/misclassifications.py: the click already applied to the filters
GAL_PER_CLASS = "gal_per_class"  # app_pages/misclassifications.py: per-class chart
GAL_TRUE = "gal_true"  # app_pages/misclassifications.py: true-class filter (also set by a click)
GAL_PRED = "gal_pred"  # app_pages/misclassifications.py: predicted-class filter (also set by a click)
GAL_LAYER = "gal_layer"  # app_pages/misclassifications.py
GAL_PAGE = "gal_page"  # app_pages/misclassifications.py
GAL_LAST_TILES = "gal_last_tiles"  # ui.last_good (from the gallery): the last page of CAM tiles that worked
