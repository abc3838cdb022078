"""Engines that execute an extraction plan: ``local`` (this machine)."""
