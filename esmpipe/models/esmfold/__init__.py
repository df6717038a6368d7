"""ESMFold: the folding trunk, structure module, geometry and residue constants.

Modules, in reading order: `config` (dataclass tree), `residue_constants`,
`rigid`, `geometry`, `ipa`, `structure_module` (the structure module);
`chunking`, `attention`, `layers`, `triangular`, `tri_self_attn_block`,
`trunk` (the folding trunk); `heads`, `confidence` (output heads and
pLDDT/pTM/PAE); `modeling_esmfold` (`EsmForProteinFolding`).

Kept import-light: nothing is imported here, and `residue_constants` must stay
importable without torch.
"""
