"""``lxmert-demo``: a Gradio page over :class:`pipeline.api.Pipeline` (the optional ``[web]``
extra).

- :mod:`pipeline.web.models`: which models resolve here, and loading each one once.
- :mod:`pipeline.web.service`: the page's work as plain functions of (image, text, settings)
  -> values, tested without a server; never imports gradio.
- :mod:`pipeline.web.gate`: what a request may name (stored files, offered models, bounded
  numbers); one message for every refused file.
- :mod:`pipeline.web.app`: ``build_app(service, start)`` -> ``gradio.Blocks``, layout only.
- :mod:`pipeline.web.why`: an explanation as a relevance picture and HTML (no gradio).
- :mod:`pipeline.web.why_view`: the "why" views (answers and NLVR2 verdicts) and the
  values of the ``explain`` endpoint.
- :mod:`pipeline.commands.demo`: the ``lxmert-demo`` command.
- :mod:`pipeline.web.browser`: the server as a process and headless Chromium (Playwright on
  the system's ``chromium``), for the browser test and ``python3 tasks.py screenshot``.

Importing this package imports neither gradio nor torch.
"""

#: Uploads larger than this are refused (bytes); the page's own limit, below the library's.
#: Here, not in :mod:`pipeline.web.service`, so that ``lxmert-demo``'s parser (its default)
#: is built without torch.
DEFAULT_MAX_UPLOAD_BYTES = 20_000_000
