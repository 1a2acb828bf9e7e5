"""One module per ``densnet`` sub-command."""
