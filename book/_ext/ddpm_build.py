"""Sphinx extension of the book's build: the chapters' kernels run as a build, never as a reader's.

``ddpm_core.viz.glue`` prints the values it glues below their cell in a reader's kernel (Colab,
JupyterLab: ``viz.reader_kernel``), which it detects partly from the environment. A build started
from inside a notebook (``!jupyter-book build .``) inherits that environment; the kernels that
execute the chapters inherit this process's, so setting ``DDPM_GLUE_DISPLAY=0`` here keeps the
reader's view out of the HTML whatever started the build.
"""
import os


def setup(app):
    os.environ["DDPM_GLUE_DISPLAY"] = "0"  # viz.GLUE_DISPLAY_ENV (ddpm_core is not imported by Sphinx)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
