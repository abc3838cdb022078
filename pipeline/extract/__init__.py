"""The ``extract_features`` run: flags to settings (``settings.py``), inputs (``inputs.py``,
``boxes_file.py``), the plan (``plan.py``), the steps that hold the output and run an engine
(``steps.py``), box drawings (``visualize.py``), and ``engines/`` (local and Ray).
"""
