"""What the tests and the benchmarks both measure against, so that neither imports the other:

* ``reference_data``: the shared reference cases (``../shared/reference/``) and their expected outputs;
* ``reference_port``: the reference's LLaVA selection, ported line by line (its data flow, for parity);
* ``reference_code``: the reference's own code, loaded from a checkout you point to;
* ``authors_baselines``: the baselines' authors' selection code (DivPrune, VisionZip, VisPruner, CDPruner).

Not part of the installed package: a checkout's yardsticks.
"""
