"""``lxmert-finetune``: ``command.py`` (``train``'s flags and wiring, and the sub-command
table), ``evaluate.py``, ``export.py``, and the flags and checks they share (``common.py``,
``subset.py``, ``labels.py``, ``resume.py``, ``outputs.py``, ``nlvr2.py``, ``distributed.py``,
``data_errors.py``). The training itself is :mod:`encoder.finetune`.
"""
