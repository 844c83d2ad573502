"""One module per stage kind, each holding that kind's typed config."""
