"""The student's base model, exported once as a transformers folder into the store.

A package of its own so that its cache key (which hashes the defining package's source) changes only
when the export itself changes, not with every edit of the train stage.
"""
