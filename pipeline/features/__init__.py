"""What is on disk: the feature files and the facts beside them.

``output.py`` (the extraction output: policy, opening, resume ids, facts), ``store.py`` and
``index.py`` (:class:`~pipeline.features.store.FeatureStore`, random access by image id),
``manifest.py`` (the JSON beside an output), ``fingerprint.py`` (the one file fingerprint),
``formats/`` (one module per format the field uses, and their registry).
"""
