"""ESMFold: the folding trunk, structure module, geometry and residue constants.

Kept import-light: `residue_constants` must stay importable without torch.
"""
