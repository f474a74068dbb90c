import importlib
import inspect
from pathlib import Path

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


@pytest.mark.parametrize(
    "module",
    [
        "vdblocks",
        "vdblocks.layers",
        "vdblocks.attention",
        "vdblocks.diffusion",
        "reference_models.common",
        "reference_models.common.data",
        "reference_models.common.probe",
        "reference_models.etc",
        "reference_models.evdm",
        "reference_models.cmd",
        "reference_models.pvdm",
    ],
)
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
    [
        "vdblocks",
        "vdblocks.layers",
        "vdblocks.attention",
        "vdblocks.diffusion",
        "reference_models.common",
        "reference_models.common.probe",
        "reference_models.etc",
        "reference_models.evdm",
        "reference_models.cmd",
        "reference_models.pvdm",
    ],
)
def test_re_exports_do_not_shadow_submodules(package):
    import pkgutil

    module = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(module.__path__)}
    assert not submodules & set(module.__all__)
    for name in submodules:
        assert inspect.ismodule(importlib.import_module(f"{package}.{name}"))


SYSTEMS = ("etc", "evdm", "pvdm", "cmd")


@pytest.mark.parametrize("system", SYSTEMS)
def test_no_system_imports_another_and_common_imports_none(system):
    """What two systems share lives in reference_models.common; common depends on no system."""
    import ast
    import pathlib

    import reference_models

    root = pathlib.Path(reference_models.__file__).parent
    others = {s for s in SYSTEMS if s != system}
    for package, forbidden in ((system, others), ("common", set(SYSTEMS))):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
                    names = [f"reference_models.{node.module}"]  # from ..evdm import x
                for name in names:
                    parts = name.split(".")
                    assert not (parts[0] == "reference_models" and len(parts) > 1 and parts[1] in forbidden), (
                        f"{path.relative_to(root)} imports {name}"
                    )


# Every system has the same files; a system with several networks may split model.py by network.
MODEL_FILES = {
    "etc": ("model.py",),
    "evdm": ("model.py",),
    "pvdm": ("autoencoder.py", "unet.py"),
    "cmd": ("autoencoder.py", "content_model.py", "motion_model.py"),
}


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_system_has_the_same_files(system):
    """config.py, the model file(s), sampling.py (library), train.py and sample.py (a thin CLI)."""
    import reference_models

    root = Path(reference_models.__file__).parent / system
    for name in ("config.py", *MODEL_FILES[system], "sampling.py", "train.py", "sample.py"):
        assert (root / name).is_file(), f"reference_models/{system}/{name} is missing"
    cli = importlib.import_module(f"reference_models.{system}.sample")
    assert set(cli.__all__) == {"build_parser", "main"}, f"{system}/sample.py should be a CLI only"


def test_nothing_imports_a_cli_module_or_lazy_exports():
    """Library code never imports a system's sample.py (a CLI), so no package needs lazy re-exports."""
    import ast

    import reference_models

    root = Path(reference_models.__file__).parent
    packages = {"reference_models", "common", *SYSTEMS}
    assert not (root / "common" / "lazy.py").exists()
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(root)
        for node in ast.walk(tree):
            modules = []  # the modules this import names (``from pkg import sample`` names pkg.sample)
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                modules = [module]
                if not module or module.split(".")[-1] in packages:
                    modules += [f"{module}.{a.name}" for a in node.names]
                assert "lazy_exports" not in {a.name for a in node.names}, f"{where} imports lazy_exports"
            for name in modules:
                assert name.split(".")[-1] not in ("sample", "lazy"), f"{where} imports {name}"
        top = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        assert "__getattr__" not in top, f"{where} defines a module __getattr__"


def test_both_packages_ship_their_type_hints():
    """PEP 561: a py.typed marker in each package, listed as package data so wheels carry it."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    for package in ("vdblocks", "reference_models"):
        assert (root / package / "py.typed").is_file(), package
        assert "py.typed" in config["tool"]["setuptools"]["package-data"][package], package
