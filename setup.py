"""Build hook only (the project is described in pyproject.toml).

The default model bundle's source of truth is ``resources/models/default.*`` in the repository;
the build copies it into the package as ``napari_gitseg/default_model/`` so that a wheel (how
napari users install plugins) carries it. ``napari_gitseg.resources.default_model_path`` looks
there first, then in the source tree (editable installs).
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
MODEL_SOURCE = ROOT / "resources" / "models"
MODEL_FILES = ("default.json", "default.safetensors")
MODEL_TARGET = ("napari_gitseg", "default_model")


class BuildPyWithDefaultModel(build_py):
    """``build_py`` plus the default model bundle as package data of ``napari_gitseg``."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads resources/models in place
        target = Path(self.build_lib).joinpath(*MODEL_TARGET)
        self.mkpath(str(target))
        for name in MODEL_FILES:
            source = MODEL_SOURCE / name
            if not source.is_file():
                raise FileNotFoundError(f"{source}: the default model bundle is missing; the wheel needs it")
            self.copy_file(str(source), str(target / name))

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return [*outputs, *(str(Path(self.build_lib).joinpath(*MODEL_TARGET, n)) for n in MODEL_FILES)]


setup(cmdclass={"build_py": BuildPyWithDefaultModel})
