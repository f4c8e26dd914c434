"""The ``bastion`` command line (typer); one module per command group."""
