"""The ``ssm`` command line: generate, train, eval, bench (see ``python -m ssm --help``)."""
