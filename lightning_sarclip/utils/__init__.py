"""Small helpers shared by the whole package: standard library only, importable without Lightning or torch.

* :mod:`lightning_sarclip.utils.atomic`: the one home of atomic (temporary file + rename) file writes.
"""
