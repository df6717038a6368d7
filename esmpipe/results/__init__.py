"""Getting answers out of a results folder, from Python and for the commands.

    from esmpipe.results import Results

    res = Results("results")
    res.hits(min_plddt=70, min_ptm=0.7)          # pandas, one row per input record
    res.query("SELECT * FROM sequences WHERE n_samples > 1")
    res.similar("sample_a/a1", k=10)             # nearest by embedding cosine
    print(res.structure("a1", format="cif"))     # mmCIF text, pLDDT in B-factors
    res.proteins.filter("status = 'ok'").count("*")   # lazy DuckDB relations

The tables (`proteins`, `structures`, `embeddings`, `contigs`) and the derived
views (`sequences`, `records`) are described in `esmpipe.pipeline.query`.
"""

from esmpipe.results.core import RecordNotFound, Results

__all__ = ["RecordNotFound", "Results"]
