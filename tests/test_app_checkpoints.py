"""AppTest tests of checkpoint uploads on the CAM Explorer page: a refused checkpoint is named in an ``st.error``, the
last model goes on working, and nothing escapes as an exception (catalogue rows 69 and 70)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch
from helpers.apptest import APP, TIMEOUT, explained
from helpers.checkpoint_files import Storage, Tensor, saved, torch_zip, zip_bomb
from streamlit.testing.v1 import AppTest

from ui import checkpoint_store, keys

WEIGHTS = Path(APP).parent / "models" / "cifar10_resnet20" / "model.safetensors"
MINE = "ResNet-20 (your checkpoint: mine.safetensors)"


def _weights() -> dict[str, torch.Tensor]:
    return safetensors.torch.load(WEIGHTS.read_bytes())


def _with_fc(tensor: torch.Tensor) -> bytes:
    return saved(_weights() | {"fc.weight": tensor})


def _complex_nan() -> bytes:
    weight = _weights()["fc.weight"].to(torch.complex64)
    weight[0, 0] = complex(float("nan"), 0.0)
    return _with_fc(weight)


# upload name: (its bytes, what the error says). One of each kind: declared work (row 69), tensor kinds (row 70).
BAD_UPLOADS = {
    "bomb.pt": (zip_bomb, "record 'archive/data/0' is compressed (1,06"),
    "extent.pt": (
        lambda: torch_zip({"fc.weight": Tensor(Storage("0", 4), 0, (10, 64), (64, 1))}, {"0": bytes(16)}),
        "its extent reaches past the bytes behind it",
    ),
    "float8.safetensors": (
        lambda: safetensors.torch.save(_weights() | {"fc.weight": torch.zeros(10, 64, dtype=torch.float8_e4m3fn)}),
        "tensor 'fc.weight' is float8 (F8_E4M3)",
    ),
    "sparse.pt": (lambda: _with_fc(_weights()["fc.weight"].to_sparse()), "fc.weight is sparse (sparse_coo)"),
    "quantised.pt": (
        lambda: _with_fc(torch.quantize_per_tensor(_weights()["fc.weight"], 0.01, 0, torch.qint8)),
        "fc.weight is quantised (qint8)",
    ),
    "complex-nan.pt": (_complex_nan, "fc.weight is complex (complex64)"),
    "meta.pt": (lambda: _with_fc(torch.empty(10, 64, device="meta")), "fc.weight is meta (no data)"),
    "integers.pt": (lambda: _with_fc(_weights()["fc.weight"].long()), "fc.weight int64 vs float32"),
}


def _layers(at: AppTest) -> list[str]:
    return at.multiselect(key=keys.cam_layers(at.session_state[f"{keys.CAM}_last_model"])).value


def _shown(markdown: str) -> str:
    """The text as shown: ``ui.text.md`` escapes Markdown's characters in user data."""
    return re.sub(r"\\(.)", r"\1", markdown)


def _errors(at: AppTest) -> str:
    return " ".join(_shown(e.value) for e in at.error)


@pytest.fixture()
def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's beta warnings for sparse and quantised tensors
@pytest.mark.bad_input(69, kind="AT")
@pytest.mark.bad_input(70, kind="AT")
def test_a_refused_checkpoint_is_named_and_the_last_model_kept(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint_store._refusals().clear()
    # The store is keyed by the file's content: another test's upload of the same weights under another name would
    # otherwise be the one this test's caption names.
    checkpoint_store._checkpoint_models().clear()
    app.selectbox(key="cam_model").set_value("checkpoint").run()
    app.selectbox(key="cam_ckpt_arch").set_value("cifar10_resnet20").run()
    app.file_uploader(key="cam_ckpt_file").set_value(
        ("mine.safetensors", WEIGHTS.read_bytes(), "application/octet-stream")
    )
    app.run()
    assert not app.exception and not app.error
    mine = app.session_state[f"{keys.CAM}_last_model"]
    assert mine.startswith("checkpoint:cifar10_resnet20:") and _layers(app) == ["layer3"]
    shown = explained(app)
    for name, (make, message) in BAD_UPLOADS.items():
        app.file_uploader(key="cam_ckpt_file").set_value((name, make(), "application/octet-stream"))
        app.run()
        assert not app.exception, (name, [e.value for e in app.exception])
        assert message in _errors(app), (name, _errors(app))
        assert [_shown(c.value) for c in app.caption if "Still using" in c.value] == [f"Still using: {MINE}"], name
        assert app.session_state[f"{keys.CAM}_last_model"] == mine and _layers(app) == ["layer3"], name
        assert explained(app) == shown, name  # its CAM is still shown
    with monkeypatch.context() as patch:  # a rerun shows the refusal again without reading the file again
        patch.setattr(checkpoint_store, "load_checkpoint", lambda *args, **kwargs: pytest.fail("read again"))
        app.run()
    assert not app.exception and BAD_UPLOADS["integers.pt"][1] in _errors(app)
    checkpoint_store._checkpoint_models().clear()


def test_refusals_are_bounded_and_only_for_refused_uploads() -> None:
    refused = checkpoint_store._refusals()
    refused.clear()
    for i in range(10 * checkpoint_store.CHECKPOINT_STORE_MODELS):
        checkpoint_store._remember(refused, f"upload-{i}:resnet18", "why")
    assert len(refused) == 8 * checkpoint_store.CHECKPOINT_STORE_MODELS and "upload-0:resnet18" not in refused
    refused.clear()
    with pytest.raises(Exception, match="is compressed"):
        checkpoint_store.register_checkpoint("resnet18", zip_bomb(8 << 20), "b.pt", device="cpu", upload_id="u1")
    assert list(refused) == ["u1:resnet18"]
    with pytest.raises(Exception, match="is compressed"):  # not read again: the same message from the table
        checkpoint_store.register_checkpoint("resnet18", b"", "b.pt", device="cpu", upload_id="u1")
    refused.clear()


def test_the_uploads_are_what_torch_and_safetensors_write() -> None:
    # The kinds come from torch.save and safetensors themselves; the declared-work files are torch's own layout.
    for name in ("sparse.pt", "quantised.pt", "complex-nan.pt", "meta.pt", "integers.pt"):
        assert isinstance(torch.load(io.BytesIO(BAD_UPLOADS[name][0]()), weights_only=True)["fc.weight"], torch.Tensor)
