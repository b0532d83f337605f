"""One module per benchmark; `llavakit.eval.registry` maps the names to the classes."""
