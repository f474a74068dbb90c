import importlib
import inspect

import pytest

import vdblocks
import vdblocks.layers

SEVEN = [
    "BottleneckResidualPathway",
    "ChannelSplit",
    "MixedSelfAttention",
    "TriplaneProjector",
    "ContentFrameHead",
    "SpatialTemporalMixedEmbedding",
    "FPSEmbedding",
]


def test_seven_blocks_at_top_level():
    from vdblocks import (  # noqa: F401
        BottleneckResidualPathway,
        ChannelSplit,
        ContentFrameHead,
        FPSEmbedding,
        MixedSelfAttention,
        SpatialTemporalMixedEmbedding,
        TriplaneProjector,
    )

    assert set(SEVEN) <= set(vdblocks.__all__)


@pytest.mark.parametrize("module", ["vdblocks", "vdblocks.layers", "vdblocks.attention", "vdblocks.diffusion", "reference_models.common", "reference_models.common.data", "reference_models.etc", "reference_models.evdm", "reference_models.cmd", "reference_models.pvdm"])
def test_all_names_resolve(module):
    module = importlib.import_module(module)
    assert inspect.ismodule(module)
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize("name", SEVEN)
def test_blocks_document_shapes_and_equations(name):
    doc = inspect.getdoc(getattr(vdblocks, name)) or ""
    assert "(b," in doc and "->" in doc, name  # einops-letter layout, input -> output
    assert "eq" in doc.lower() or "section" in doc.lower(), name


def test_vdblocks_never_imports_reference_models():
    import pathlib

    root = pathlib.Path(vdblocks.__file__).parent
    for path in root.rglob("*.py"):
        assert "reference_models" not in path.read_text(), path


@pytest.mark.parametrize(
    "package",
    ["vdblocks", "vdblocks.layers", "vdblocks.attention", "vdblocks.diffusion", "reference_models.common",
     "reference_models.etc", "reference_models.evdm", "reference_models.cmd", "reference_models.pvdm"],
)
def test_re_exports_do_not_shadow_submodules(package):
    import pkgutil

    module = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(module.__path__)}
    assert not submodules & set(module.__all__)
    for name in submodules:
        assert inspect.ismodule(importlib.import_module(f"{package}.{name}"))
