"""Engines that execute an extraction plan: ``local`` (this machine) and ``ray`` (a Ray
cluster; the optional extra, imported only when asked for)."""
