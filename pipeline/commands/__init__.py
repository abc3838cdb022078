"""The console scripts, each a :class:`weights.command.Command` run by
:func:`weights.command.run_command`: ``extract.py`` (``extract_features``) and its
sub-commands ``merge.py``, ``convert.py``, ``compare.py``; ``answer.py``, ``judge.py``,
``finetune/`` (``lxmert-finetune``), ``demo.py`` (``lxmert-demo``). Their shared
flags are :mod:`pipeline.flags`. Nothing below this package imports it.
"""
