"""Training methods as plug-ins: one module per method (sft, dpo, orpo, ...), each holding one MethodSpec.

    spec.py      what a method declares: its records, trainer, settings table, eval, wording
    registry.py  the list of methods (one line each) and `method_spec(name)`

Nothing is imported here, so a method module can import `methods.spec`
without loading the registry (which imports every method).
"""
