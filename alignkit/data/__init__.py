"""The data layer: from a recipe's `data` section to the datasets a TRL trainer consumes.

`prepare.prepare_data(recipe, method, tokenizer)` is the one entry point: it loads each source
(`sources`), recognises and normalises its format (`formats`), removes benchmark rows (`decontaminate`),
weights and pools the sources (`mixture`), renders chat templates (`templates`) and tokenizes with loss
masks (`masking`, `preference`), caches the result by content fingerprint (`cache`) and describes what it
did (`report`). Nothing here is imported by the light CLI layer; `datasets` and `transformers` load lazily.
"""
