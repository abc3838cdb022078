"""Feature files in the formats the field uses: write, read in order, read by id.

See :mod:`pipeline.features.formats.registry` for the table and ``docs/formats.md`` for the page.
"""
