# Python imports this at start-up when this folder is on PYTHONPATH: the notebook kernels that
# tests/test_notebooks.py starts run with the same offline guard as the tests.
import offline_guard

offline_guard.install()
