"""Offline stand-in for the get-pip bootstrap script that ansible-test downloads.

ansible-test fetches get-pip.py from a host this machine cannot reach, then runs it in a fresh venv as
``get_pip.py [pip options] pip==X.Y``. This script gives the same result from the venv's own ensurepip and
PyPI (reachable): bootstrap pip, then install the requested pip version.
"""

import runpy
import subprocess
import sys

IGNORED = {"--no-setuptools", "--no-wheel"}

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
args = [arg for arg in sys.argv[1:] if arg not in IGNORED]
sys.argv = ["pip", "install", *args]
runpy.run_module("pip", run_name="__main__", alter_sys=True)
