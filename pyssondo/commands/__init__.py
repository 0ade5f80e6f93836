"""One module per ``ssondo`` subcommand; see :mod:`pyssondo.cli` for the contract."""
