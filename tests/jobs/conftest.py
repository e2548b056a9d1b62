"""The jobs tests. This directory holds no package (no ``__init__.py``, so it cannot shadow ``jobs``);
loading this conftest puts it on ``sys.path``, which is how the tests in its subdirectories import the
support module they share with ``test_alerts.py`` (``test_validate_support``)."""
